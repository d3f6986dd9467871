-- The activation difference lens (arXiv 2510.13900): the mean of ft − base at each of the positions $first_position .. $positions − 1
-- of $dataset, at $layer.
SELECT $layer AS layer, pos, count(*) AS tokens, mean_diff(base, ft) AS mean_diff, vec_norm(mean_diff(base, ft)) AS norm
FROM acts
WHERE model = $model AND organism = $organism AND dataset = $dataset AND layer = $layer AND pos BETWEEN $first_position AND $positions - 1
GROUP BY pos
ORDER BY pos;
