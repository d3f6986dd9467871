-- Setup: the projection of ft − base of every organism token at the dictionary's layer on each examined
-- component.
CREATE VIEW examples AS
SELECT CAST(u.i - 1 AS INT) AS latent, p[u.i] AS activation, dataset, seq_id, pos
FROM (
    SELECT dataset, seq_id, pos, pca_project(vec_sub(ft, base), $dictionary, $top_latents) AS p
    FROM acts
    WHERE model = $model AND organism = $organism AND layer = $layer
)
CROSS JOIN unnest(generate_series(1, $top_latents)) AS u(i);
