-- Auto-patchscope: the tokens that stay in the top $k across scales (at half of them or more), and the scale
-- whose top tokens agree most with them (`best_scale`: the most consistent reading of the difference).
WITH n AS (SELECT count(DISTINCT scale) AS scales FROM adl_patchscope),
stable AS (
    SELECT token_id, min(token) AS token, count(DISTINCT scale) AS scales, min(rank) AS best_rank, avg(prob) AS mean_prob
    FROM adl_patchscope GROUP BY token_id
    HAVING 2 * count(DISTINCT scale) >= (SELECT scales FROM n)
),
per_scale AS (
    SELECT scale, count(*) AS stable_tokens FROM adl_patchscope WHERE token_id IN (SELECT token_id FROM stable)
    GROUP BY scale
),
best AS (SELECT scale FROM per_scale ORDER BY stable_tokens DESC, scale LIMIT 1)
SELECT s.token_id, s.token, s.scales, s.best_rank, s.mean_prob, (SELECT scale FROM best) AS best_scale
FROM stable s
ORDER BY s.scales DESC, s.best_rank, s.token_id;
