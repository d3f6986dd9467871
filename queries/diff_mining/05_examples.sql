-- For the $example_tokens tokens that most often land among the largest logit differences (overall), the
-- $examples positions where the finetune raised each most, with the text before them.
WITH top_tokens AS (
    SELECT token_id, row_number() OVER (ORDER BY sum(top_count) DESC, token_id) AS token_rank
    FROM logit_diff_totals
    WHERE model = $model AND organism = $organism
    GROUP BY token_id
    ORDER BY token_rank
    LIMIT $example_tokens
),
occurrences AS (
    SELECT dataset, seq_id, pos, id, value
    FROM (SELECT dataset, seq_id, pos, unnest(top_ids) AS id, unnest(top_values) AS value
          FROM logit_diff WHERE model = $model AND organism = $organism)
    WHERE id IN (SELECT token_id FROM top_tokens)
),
hits AS (
    SELECT * FROM (
        SELECT o.*, t.token_rank,
               row_number() OVER (PARTITION BY o.id ORDER BY o.value DESC, o.dataset, o.seq_id, o.pos) AS example
        FROM occurrences o JOIN top_tokens t ON t.token_id = o.id
    ) WHERE example <= $examples
),
context AS (
    SELECT hits.id, hits.example, string_agg(c.token, '' ORDER BY c.pos) AS context
    FROM hits JOIN tokens c
      ON c.model = $model AND c.organism = 'base' AND c.dataset = hits.dataset AND c.seq_id = hits.seq_id
     AND c.pos BETWEEN hits.pos - $context_width AND hits.pos
    GROUP BY hits.id, hits.example
)
SELECT hits.token_rank, v.token AS promoted, hits.example, hits.value AS logit_diff, hits.dataset, hits.seq_id,
       hits.pos, context.context
FROM hits
JOIN vocab v ON v.model = $model AND v.token_id = hits.id
JOIN context ON context.id = hits.id AND context.example = hits.example
ORDER BY hits.token_rank, hits.example;
