-- Per dataset, the vocabulary tokens that most often land among the largest ft − base logit differences of a
-- token (the `preprocessing.diff_top_k` kept per token; the toolkit's top_k_occurring ordering): how often
-- (percent of the dataset's tokens), how often among the smallest instead, the mean difference over every
-- token, and the fraction of tokens where it is positive.
WITH ranked AS (
    SELECT dataset, token_id, top_count, bottom_count, positions,
           100.0 * top_count / positions AS occurrence_pct,
           sum_diff / positions AS mean_diff,
           CAST(positive_count AS DOUBLE) / positions AS fraction_positive,
           row_number() OVER (PARTITION BY dataset ORDER BY top_count DESC, token_id) AS rank
    FROM logit_diff_totals
    WHERE model = $model AND organism = $organism AND top_count > 0
)
SELECT r.dataset, r.rank, r.token_id, v.token, r.occurrence_pct, r.top_count, r.bottom_count,
       r.mean_diff, r.fraction_positive
FROM ranked r JOIN vocab v ON v.model = $model AND v.token_id = r.token_id
WHERE r.rank <= $top_n
ORDER BY r.dataset, r.rank;
