-- Mean difference vectors mean(ft − base) per layer: over all tokens, and per position 0 .. $first_positions − 1
-- (one pass: grouping sets).
WITH per_token AS (
    SELECT layer, CASE WHEN pos < $first_positions THEN pos END AS first_pos, base, ft
    FROM acts
    WHERE model = $model AND organism = $organism
)
SELECT layer, position, tokens, mean_diff FROM (
    SELECT layer, first_pos, grouping(first_pos) AS pooled,
           CASE WHEN grouping(first_pos) = 1 THEN 'all' ELSE CAST(first_pos AS VARCHAR) END AS position,
           count(*) AS tokens, mean_diff(base, ft) AS mean_diff
    FROM per_token
    GROUP BY GROUPING SETS ((layer), (layer, first_pos))
)
WHERE pooled = 1 OR first_pos IS NOT NULL
ORDER BY layer, position;
