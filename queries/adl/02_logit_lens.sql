-- Each position's mean difference read through the model's final norm and unembedding: the $k tokens it
-- promotes (sign +) and suppresses (sign -).
SELECT item + $first_position AS pos, sign, rank, token_id, token, logit, prob
FROM logit_lens(
    (SELECT mean_diff(base, ft)
     FROM acts
     WHERE model = $model AND organism = $organism AND dataset = $dataset AND layer = $layer AND pos BETWEEN $first_position AND $positions - 1
     GROUP BY pos
     ORDER BY pos),
    $model, $k)
ORDER BY pos, sign, rank;
