-- Mean difference vectors mean(ft − base) per layer: over all tokens, and per position 0 .. $first_positions − 1.
SELECT layer, 'all' AS position, count(*) AS tokens, mean_diff(base, ft) AS mean_diff
FROM acts
WHERE model = $model AND organism = $organism
GROUP BY layer
UNION ALL
SELECT layer, CAST(pos AS VARCHAR) AS position, count(*) AS tokens, mean_diff(base, ft) AS mean_diff
FROM acts
WHERE model = $model AND organism = $organism AND pos < $first_positions
GROUP BY layer, pos
ORDER BY layer, position;
