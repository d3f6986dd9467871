-- The mean difference over positions $first_position .. $positions − 1 together, through the logit lens.
SELECT sign, rank, token_id, token, logit, prob
FROM logit_lens(
    (SELECT mean_diff(base, ft)
     FROM acts
     WHERE model = $model AND organism = $organism AND dataset = $dataset AND layer = $layer AND pos BETWEEN $first_position AND $positions - 1),
    $model, $k)
ORDER BY sign, rank;
