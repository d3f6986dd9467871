-- Setup: every activation of an examined latent on ft − base of the organism's tokens at the dictionary's layer.
CREATE VIEW examples AS
SELECT code['latent'] AS latent, code['value'] AS activation, dataset, seq_id, pos
FROM (
    SELECT dataset, seq_id, pos, unnest(sae_encode(vec_sub(ft, base), $dictionary)) AS code
    FROM acts
    WHERE model = $model AND organism = $organism AND layer = $layer
)
WHERE code['latent'] IN (SELECT latent FROM top_latents);
