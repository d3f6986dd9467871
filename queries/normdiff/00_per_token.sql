-- Setup (no result table): the per-token statistics, computed in one pass and kept in memory for the next
-- queries — four floats per token instead of two vectors — and the candidates for the top-token ranking.
-- pair_stats decodes each vector once; `unnest` splits its struct into four columns in the same pass (reading
-- four fields of it with s['…'] would evaluate it four times; storing the struct first and splitting it in a
-- second statement cost 3.3× this, measured).
CREATE TABLE normdiff_per_token AS
SELECT *
FROM (SELECT layer, dataset, seq_id, pos, unnest(pair_stats(base, ft))
      FROM acts
      WHERE model = $model AND organism = $organism)
     AS t(layer, dataset, seq_id, pos, norm_diff, cos_dist, base_norm, ft_norm);

-- Per layer, the tokens at or above the exact $top_n-th largest norm difference or cosine distance (from
-- position $first_positions on): only these can rank in the top $top_n. `nth_largest` keeps a heap of $top_n
-- values instead of sorting the layer; materialising the candidates keeps the planner from sorting every row.
CREATE TABLE normdiff_candidates AS
WITH thresholds AS (
    SELECT layer,
           nth_largest(norm_diff, $top_n) AS norm_diff_min,
           nth_largest(cos_dist, $top_n) AS cos_dist_min
    FROM normdiff_per_token
    WHERE pos >= $first_positions
    GROUP BY layer
)
SELECT p.*
FROM normdiff_per_token p JOIN thresholds t ON p.layer = t.layer
WHERE p.pos >= $first_positions
  AND (t.norm_diff_min IS NULL OR t.cos_dist_min IS NULL
       OR p.norm_diff >= t.norm_diff_min OR p.cos_dist >= t.cos_dist_min);
