-- Steering with the mean difference (positions $first_position .. $positions - 1) added after the layer at every
-- token of the organism: a few prompts at a grid of strengths, each continuation graded by the unsteered model
-- (mean log-probability within 1.5 nats of the unsteered continuation's, distinct-token share at least 0.6 of
-- the unsteered one's); `chosen` marks the highest strength at which most prompts stay coherent.
SELECT alpha, prompt, text, mean_logprob, distinct_share, coherent, chosen
FROM steer_search($side,
    (SELECT mean_diff(base, ft) FROM acts
     WHERE model = $model AND organism = $organism AND dataset = $dataset AND layer = $layer
       AND pos BETWEEN $first_position AND $positions - 1),
    $layer, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0], 24)
ORDER BY alpha, prompt;
