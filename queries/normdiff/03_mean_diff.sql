-- Mean difference vectors mean(ft − base) per layer: per position 0 .. $first_positions − 1, and over all
-- tokens. One pass over the vectors, one group per (layer, first position) with the later positions in one
-- more; the layer's mean over all tokens pools those groups' means weighted by their token counts
-- (mean_vec(v, w)) instead of feeding every vector to a second grouping set.
CREATE TABLE normdiff_means AS
SELECT layer, CASE WHEN pos < $first_positions THEN pos END AS first_pos,
       count(*) AS tokens, mean_diff(base, ft) AS mean_diff
FROM acts
WHERE model = $model AND organism = $organism
GROUP BY layer, first_pos;

SELECT layer, position, tokens, mean_diff FROM (
    SELECT layer, 'all' AS position, sum(tokens) AS tokens, mean_vec(mean_diff, tokens) AS mean_diff
    FROM normdiff_means
    GROUP BY layer
    UNION ALL
    SELECT layer, CAST(first_pos AS VARCHAR) AS position, tokens, mean_diff
    FROM normdiff_means
    WHERE first_pos IS NOT NULL
)
ORDER BY layer, position;
