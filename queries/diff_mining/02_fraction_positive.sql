-- Per dataset, the vocabulary tokens whose logit the finetune raises at the largest share of tokens (the
-- toolkit's fraction_positive_diff ordering, over the full vocabulary, not only the top-k), with the mean
-- difference and how often each is among a token's largest differences.
WITH ranked AS (
    SELECT dataset, token_id, top_count, positions,
           CAST(positive_count AS DOUBLE) / positions AS fraction_positive,
           sum_diff / positions AS mean_diff,
           row_number() OVER (PARTITION BY dataset ORDER BY positive_count DESC, sum_diff DESC, token_id) AS rank
    FROM logit_diff_totals
    WHERE model = $model AND organism = $organism
)
SELECT r.dataset, r.rank, r.token_id, v.token, r.fraction_positive, r.mean_diff,
       100.0 * r.top_count / r.positions AS occurrence_pct
FROM ranked r JOIN vocab v ON v.model = $model AND v.token_id = r.token_id
WHERE r.rank <= $top_n
ORDER BY r.dataset, r.rank;
