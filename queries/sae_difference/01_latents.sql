-- Every live latent (it fired on a held-out token): how often and how strongly it fires, most of the
-- difference first.
SELECT latent, frequency, mean_activation, max_activation, frequency * mean_activation AS mass
FROM latents($dictionary)
WHERE frequency > 0
ORDER BY mass DESC, latent;
