-- Latents per class (dead: never fired on the held-out tokens), with the mean decoder cosine and the median
-- latent scaling ratios of each class.
SELECT CASE WHEN frequency = 0 THEN 'dead'
            WHEN rel_norm < 0.1 THEN 'ft_only'
            WHEN rel_norm > 0.9 THEN 'base_only'
            WHEN rel_norm BETWEEN 0.4 AND 0.6 THEN 'shared'
            ELSE 'other' END AS class,
       count(*) AS latents,
       avg(dec_cosine) AS mean_dec_cosine,
       median(nu_error) AS median_nu_error,
       median(nu_recon) AS median_nu_recon
FROM latents($dictionary)
GROUP BY 1
ORDER BY 1;
