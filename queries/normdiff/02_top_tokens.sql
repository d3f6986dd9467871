-- Per layer, the $top_n tokens with the largest ‖ft − base‖₂ and the $top_n with the largest cosine
-- distance (positions from $first_positions on: the first tokens are outliers in every model), with context.
WITH per_token AS (
    SELECT layer, dataset, seq_id, pos,
           diff_norm(base, ft) AS norm_diff,
           1 - cosine_sim(base, ft) AS cos_dist
    FROM acts
    WHERE model = $model AND organism = $organism AND pos >= $first_positions
),
ranked AS (
    SELECT 'norm_diff' AS metric, layer, dataset, seq_id, pos, norm_diff AS value,
           row_number() OVER (PARTITION BY layer ORDER BY norm_diff DESC, dataset, seq_id, pos) AS rank
    FROM per_token
    UNION ALL
    SELECT 'cos_dist' AS metric, layer, dataset, seq_id, pos, cos_dist AS value,
           row_number() OVER (PARTITION BY layer ORDER BY cos_dist DESC, dataset, seq_id, pos) AS rank
    FROM per_token
),
hits AS (SELECT * FROM ranked WHERE rank <= $top_n),
context AS (
    SELECT hits.metric, hits.layer, hits.rank,
           string_agg(c.token, '' ORDER BY c.pos) AS context,
           max(CASE WHEN c.pos = hits.pos THEN c.token END) AS token
    FROM hits JOIN tokens c
      ON c.model = $model AND c.organism = 'base' AND c.dataset = hits.dataset AND c.seq_id = hits.seq_id
     AND c.pos BETWEEN hits.pos - $context_width AND hits.pos
    GROUP BY hits.metric, hits.layer, hits.rank
)
SELECT hits.metric, hits.layer, hits.rank, hits.dataset, hits.seq_id, hits.pos, context.token, hits.value,
       context.context
FROM hits JOIN context
  ON context.metric = hits.metric AND context.layer = hits.layer AND context.rank = hits.rank
ORDER BY hits.metric, hits.layer, hits.rank;
