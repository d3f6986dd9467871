-- Patchscope per position (the toolkit reads each of the first positions apart): the mean difference at each
-- position $first_position .. $positions - 1 on the organism, the $k most likely tokens per scale.
SELECT item + $first_position AS pos, scale, rank, token_id, token, prob
FROM patchscope($side,
    (SELECT mean_diff(base, ft) FROM acts
     WHERE model = $model AND organism = $organism AND dataset = $dataset AND layer = $layer
       AND pos BETWEEN $first_position AND $positions - 1
     GROUP BY pos ORDER BY pos),
    $layer, [0.25, 0.5, 1.0, 2.0, 4.0, 8.0], $k)
ORDER BY pos, scale, rank;
