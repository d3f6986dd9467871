-- Patchscope of the mean difference: per scale, the tokens it makes most likely, and whether each is one of the
-- tokens that stay in the top $k at half the scales or more (`stable`).
WITH stable AS (
    SELECT token_id FROM adl_patchscope GROUP BY token_id
    HAVING 2 * count(DISTINCT scale) >= (SELECT count(DISTINCT scale) AS scales FROM adl_patchscope)
)
SELECT p.scale, p.rank, p.token_id, p.token, p.prob, s.token_id IS NOT NULL AS stable
FROM adl_patchscope p LEFT JOIN stable s ON s.token_id = p.token_id
ORDER BY p.scale, p.rank;
