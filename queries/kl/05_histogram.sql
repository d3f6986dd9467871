-- Histogram of per-token KL(ft || base) per dataset: the fraction of tokens in each bin of $bin_width nats.
WITH binned AS (
    SELECT dataset, (floor(kl / $bin_width) + 0.5) * $bin_width AS kl
    FROM tokens
    WHERE model = $model AND organism = $organism AND kl IS NOT NULL
)
SELECT dataset, kl, count(*) AS tokens,
       CAST(count(*) AS DOUBLE) / sum(count(*)) OVER (PARTITION BY dataset) AS fraction
FROM binned
GROUP BY dataset, kl
ORDER BY dataset, kl;
