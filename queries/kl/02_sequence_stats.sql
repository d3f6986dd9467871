-- Per-sequence mean KL(ft || base), per dataset.
WITH per_sequence AS (
    SELECT dataset, seq_id, avg(kl) AS mean_kl
    FROM tokens
    WHERE model = $model AND organism = $organism
    GROUP BY dataset, seq_id
)
SELECT
    dataset,
    count(*) AS sequences,
    avg(mean_kl) AS mean,
    stddev(mean_kl) AS std,
    percentile_cont(0.05) WITHIN GROUP (ORDER BY mean_kl) AS p5,
    percentile_cont(0.25) WITHIN GROUP (ORDER BY mean_kl) AS p25,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY mean_kl) AS median,
    percentile_cont(0.75) WITHIN GROUP (ORDER BY mean_kl) AS p75,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY mean_kl) AS p95,
    percentile_cont(0.99) WITHIN GROUP (ORDER BY mean_kl) AS p99,
    max(mean_kl) AS max
FROM per_sequence
GROUP BY dataset
ORDER BY dataset;
