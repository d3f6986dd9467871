-- Variance of ft − base along each kept component, its share of the total, and the cumulative share.
SELECT latent, explained_variance, explained_variance_ratio,
       sum(explained_variance_ratio) OVER (ORDER BY latent) AS cumulative_ratio
FROM latents($dictionary)
ORDER BY latent;
