-- Per layer, the tokens among the $top_n largest ‖ft − base‖₂ or the $top_n largest cosine distances
-- (positions from $first_positions on: the first tokens are outliers in every model), with both ranks and
-- the text before them (a rank is NULL where the token is not in that metric's top $top_n).
WITH ranked AS (SELECT * FROM normdiff_candidates),
hits AS (
    SELECT * FROM (
        SELECT *,
               row_number() OVER (PARTITION BY layer ORDER BY norm_diff DESC, dataset, seq_id, pos) AS norm_diff_rank,
               row_number() OVER (PARTITION BY layer ORDER BY cos_dist DESC, dataset, seq_id, pos) AS cos_dist_rank
        FROM ranked
    )
    WHERE norm_diff_rank <= $top_n OR cos_dist_rank <= $top_n
),
context AS (
    SELECT hits.layer, hits.dataset, hits.seq_id, hits.pos,
           string_agg(c.token, '' ORDER BY c.pos) AS context,
           max(CASE WHEN c.pos = hits.pos THEN c.token END) AS token
    FROM hits JOIN tokens c
      ON c.model = $model AND c.organism = 'base' AND c.dataset = hits.dataset AND c.seq_id = hits.seq_id
     AND c.pos BETWEEN hits.pos - $context_width AND hits.pos
    GROUP BY hits.layer, hits.dataset, hits.seq_id, hits.pos
)
SELECT hits.layer,
       CASE WHEN hits.norm_diff_rank <= $top_n THEN hits.norm_diff_rank END AS norm_diff_top,
       CASE WHEN hits.cos_dist_rank <= $top_n THEN hits.cos_dist_rank END AS cos_dist_top,
       hits.dataset, hits.seq_id, hits.pos,
       context.token, hits.norm_diff, hits.cos_dist, context.context
FROM hits LEFT JOIN context
  ON context.layer = hits.layer AND context.dataset = hits.dataset AND context.seq_id = hits.seq_id
 AND context.pos = hits.pos
ORDER BY hits.layer, least(hits.norm_diff_rank, hits.cos_dist_rank), hits.norm_diff_rank;
