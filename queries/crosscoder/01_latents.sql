-- Every live latent (it fired on a held-out token): its class by relative decoder norm
-- ((‖d_base‖ − ‖d_ft‖) / max + 1) / 2 (ft_only < 0.1, shared 0.4–0.6, base_only > 0.9, other between),
-- the cosine of its two decoder vectors, how often and how strongly it fires, and its latent scaling:
-- beta of the ft decoder vector against each model's reconstruction and error, and their ratios nu
-- (base / ft; near 0: the base model does not hold it).
SELECT latent,
       CASE WHEN rel_norm < 0.1 THEN 'ft_only'
            WHEN rel_norm > 0.9 THEN 'base_only'
            WHEN rel_norm BETWEEN 0.4 AND 0.6 THEN 'shared'
            ELSE 'other' END AS class,
       rel_norm, dec_norm_base, dec_norm_ft, dec_cosine, frequency, mean_activation, max_activation,
       beta_recon_base, beta_recon_ft, beta_error_base, beta_error_ft, nu_recon, nu_error
FROM latents($dictionary)
WHERE frequency > 0
ORDER BY rel_norm, latent;
