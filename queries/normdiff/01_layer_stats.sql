-- Per layer and dataset: ‖ft − base‖₂, cosine distance 1 − cos(base, ft), ‖base‖ and ‖ft‖, over all
-- tokens and with the first positions (pos < $first_positions) apart from the rest (grouping sets over the
-- per-token table of 00_per_token.sql); medians and p95 are t-digest estimates (approx_percentile_cont).
WITH per_token AS (
    SELECT *, CASE WHEN pos < $first_positions THEN 'first' ELSE 'rest' END AS part
    FROM normdiff_per_token
)
SELECT layer, dataset, coalesce(part, 'all') AS positions,
       count(*) AS tokens,
       avg(norm_diff) AS norm_diff_mean,
       stddev(norm_diff) AS norm_diff_std,
       approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY norm_diff) AS norm_diff_median,
       approx_percentile_cont(0.95) WITHIN GROUP (ORDER BY norm_diff) AS norm_diff_p95,
       max(norm_diff) AS norm_diff_max,
       avg(cos_dist) AS cos_dist_mean,
       stddev(cos_dist) AS cos_dist_std,
       approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY cos_dist) AS cos_dist_median,
       avg(norm_diff / base_norm) AS relative_norm_diff_mean,
       avg(base_norm) AS base_norm_mean,
       avg(ft_norm) AS ft_norm_mean
FROM per_token
GROUP BY GROUPING SETS ((layer, dataset, part), (layer, dataset))
ORDER BY layer, dataset, positions;
