-- NMF topics (Frobenius loss, the toolkit's β = 2) of the position × token matrix whose entries are each
-- position's top-k ft − base logit differences (positive part), over the first $max_positions positions of
-- every cached sequence of every dataset: per topic its heaviest tokens, and its prevalence (the share of
-- positions it explains most of).
WITH topics AS (
    SELECT * FROM nmf(
        (SELECT struct(position, id, greatest(value, 0.0))
         FROM (SELECT row_number() OVER (ORDER BY dataset, seq_id, pos) AS position,
                      unnest(top_ids) AS id, unnest(top_values) AS value
               FROM logit_diff
               WHERE model = $model AND organism = $organism AND pos < $max_positions)),
        $topics, $nmf_iterations)
)
SELECT t.topic, t.rank, CAST(t.item AS INT) AS token_id, v.token, t.weight, t.prevalence
FROM topics t JOIN vocab v ON v.model = $model AND v.token_id = CAST(t.item AS INT)
WHERE t.rank <= $topic_tokens
ORDER BY t.topic, t.rank;
