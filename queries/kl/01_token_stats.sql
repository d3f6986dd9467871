-- Per-token KL(ft || base) of next-token distributions, per dataset.
SELECT
    dataset,
    count(*) AS tokens,
    avg(kl) AS mean,
    stddev(kl) AS std,
    percentile_cont(0.05) WITHIN GROUP (ORDER BY kl) AS p5,
    percentile_cont(0.25) WITHIN GROUP (ORDER BY kl) AS p25,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY kl) AS median,
    percentile_cont(0.75) WITHIN GROUP (ORDER BY kl) AS p75,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY kl) AS p95,
    percentile_cont(0.99) WITHIN GROUP (ORDER BY kl) AS p99,
    max(kl) AS max
FROM tokens
WHERE model = $model AND organism = $organism
GROUP BY dataset
ORDER BY dataset;
