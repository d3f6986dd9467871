-- Setup: the projection of ft − base of every organism token at the dictionary's layer on each examined
-- component (the two unnests run side by side: component i beside coordinate i).
CREATE VIEW examples AS
SELECT CAST(latent AS INT) AS latent, activation, dataset, seq_id, pos
FROM (
    SELECT dataset, seq_id, pos,
           unnest(pca_project(vec_sub(ft, base), $dictionary, $top_latents)) AS activation,
           unnest(range(0, $top_latents)) AS latent
    FROM acts
    WHERE model = $model AND organism = $organism AND layer = $layer
);
