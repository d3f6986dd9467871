-- The tokens where the organism's next-token distribution departs most from the base model's, with the
-- text around them and both models' five most likely next tokens.
WITH ranked AS (
    SELECT dataset, seq_id, pos, token, kl, topk_ids AS ft_topk,
           row_number() OVER (ORDER BY kl DESC, dataset, seq_id, pos) AS rank
    FROM tokens
    WHERE model = $model AND organism = $organism AND kl IS NOT NULL
),
hits AS (SELECT * FROM ranked WHERE rank <= $top_n),
context AS (
    SELECT hits.rank, string_agg(c.token, '' ORDER BY c.pos) AS context
    FROM hits JOIN tokens c
      ON c.model = $model AND c.organism = 'base' AND c.dataset = hits.dataset AND c.seq_id = hits.seq_id
     AND c.pos BETWEEN hits.pos - $context_width AND hits.pos
    GROUP BY hits.rank
),
base_top AS (
    SELECT hits.rank, b.topk_ids AS base_topk
    FROM hits JOIN tokens b
      ON b.model = $model AND b.organism = 'base' AND b.dataset = hits.dataset AND b.seq_id = hits.seq_id
     AND b.pos = hits.pos
),
ft_next AS (
    SELECT hits.rank, string_agg(v.token, '|' ORDER BY u.i) AS ft_next
    FROM hits CROSS JOIN unnest(generate_series(1, 5)) AS u(i)
    JOIN vocab v ON v.model = $model AND v.token_id = hits.ft_topk[u.i]
    GROUP BY hits.rank
),
base_next AS (
    SELECT bt.rank, string_agg(v.token, '|' ORDER BY u.i) AS base_next
    FROM base_top bt CROSS JOIN unnest(generate_series(1, 5)) AS u(i)
    JOIN vocab v ON v.model = $model AND v.token_id = bt.base_topk[u.i]
    GROUP BY bt.rank
)
SELECT hits.rank, hits.dataset, hits.seq_id, hits.pos, hits.token, hits.kl, context.context,
       ft_next.ft_next, base_next.base_next
FROM hits
JOIN context ON context.rank = hits.rank
JOIN ft_next ON ft_next.rank = hits.rank
JOIN base_next ON base_next.rank = hits.rank
ORDER BY hits.rank;
