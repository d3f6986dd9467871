-- The sequences with the highest mean KL(ft || base), with their text.
WITH per_sequence AS (
    SELECT dataset, seq_id, avg(kl) AS mean_kl, max(kl) AS max_kl, count(*) AS tokens
    FROM tokens
    WHERE model = $model AND organism = $organism
    GROUP BY dataset, seq_id
),
ranked AS (
    SELECT *, row_number() OVER (ORDER BY mean_kl DESC, dataset, seq_id) AS rank FROM per_sequence
)
SELECT r.rank, r.dataset, r.seq_id, r.mean_kl, r.max_kl, r.tokens, s.text
FROM ranked r
JOIN sequences s ON s.model = $model AND s.dataset = r.dataset AND s.seq_id = r.seq_id
WHERE r.rank <= $top_n
ORDER BY r.rank;
