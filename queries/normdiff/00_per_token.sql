-- Setup (no result table): the per-token statistics, computed in one pass and kept in memory for the next
-- queries — four floats per token instead of two vectors.
CREATE TABLE normdiff_per_token AS
SELECT layer, dataset, seq_id, pos,
       diff_norm(base, ft) AS norm_diff,
       1 - cosine_sim(base, ft) AS cos_dist,
       vec_norm(base) AS base_norm,
       vec_norm(ft) AS ft_norm
FROM acts
WHERE model = $model AND organism = $organism;
