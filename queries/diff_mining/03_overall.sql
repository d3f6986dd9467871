-- Over every cached dataset together, the tokens that most often land among a token's largest logit
-- differences: the list to read first (and the chart).
WITH totals AS (
    SELECT token_id, sum(top_count) AS top_count, sum(bottom_count) AS bottom_count, sum(positions) AS positions,
           sum(sum_diff) AS sum_diff, sum(positive_count) AS positive_count
    FROM logit_diff_totals
    WHERE model = $model AND organism = $organism
    GROUP BY token_id
),
ranked AS (
    SELECT *, row_number() OVER (ORDER BY top_count DESC, token_id) AS rank FROM totals WHERE top_count > 0
)
SELECT r.rank, r.token_id, v.token, 100.0 * r.top_count / r.positions AS occurrence_pct, r.top_count,
       r.bottom_count, r.sum_diff / r.positions AS mean_diff,
       CAST(r.positive_count AS DOUBLE) / r.positions AS fraction_positive
FROM ranked r JOIN vocab v ON v.model = $model AND v.token_id = r.token_id
WHERE r.rank <= $top_n
ORDER BY r.rank;
