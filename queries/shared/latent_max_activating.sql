-- (Shared by the dictionary methods: each links it.) For each examined latent or component, the
-- $max_examples tokens of the method's `examples` view where it is largest, with the text before them and both
-- models' most likely next token there.
WITH hits AS (
    SELECT * FROM (
        SELECT *, row_number() OVER (PARTITION BY latent ORDER BY activation DESC, dataset, seq_id, pos) AS rank
        FROM examples
    )
    WHERE rank <= $max_examples
),
context AS (
    SELECT hits.latent, hits.rank, string_agg(c.token, '' ORDER BY c.pos) AS context,
           max(CASE WHEN c.pos = hits.pos THEN c.token END) AS token
    FROM hits JOIN tokens c
      ON c.model = $model AND c.organism = 'base' AND c.dataset = hits.dataset AND c.seq_id = hits.seq_id
     AND c.pos BETWEEN hits.pos - $context_width AND hits.pos
    GROUP BY hits.latent, hits.rank
),
next AS (
    SELECT hits.latent, hits.rank, vb.token AS base_next, vf.token AS ft_next
    FROM hits
    JOIN tokens b ON b.model = $model AND b.organism = 'base' AND b.dataset = hits.dataset AND b.seq_id = hits.seq_id AND b.pos = hits.pos
    JOIN tokens f ON f.model = $model AND f.organism = $organism AND f.dataset = hits.dataset AND f.seq_id = hits.seq_id AND f.pos = hits.pos
    LEFT JOIN vocab vb ON vb.model = $model AND vb.token_id = b.topk_ids[1]
    LEFT JOIN vocab vf ON vf.model = $model AND vf.token_id = f.topk_ids[1]
)
SELECT t.ord, hits.latent, hits.rank, hits.activation, hits.dataset, hits.seq_id, hits.pos,
       context.token, context.context, next.base_next, next.ft_next
FROM hits
JOIN top_latents t ON t.latent = hits.latent
JOIN context ON context.latent = hits.latent AND context.rank = hits.rank
LEFT JOIN next ON next.latent = hits.latent AND next.rank = hits.rank
ORDER BY t.ord, hits.rank;
