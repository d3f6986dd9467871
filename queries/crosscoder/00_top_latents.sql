-- Setup: the latents examined in detail: the most organism-specific live latents (lowest relative decoder
-- norm; below 0.1 they are ft-only), and among equals those the base model explains least (latent scaling
-- ratio nu_error, arXiv 2504.02922). `ord` numbers them from 0 in that order; `vector` is the ft decoder.
CREATE VIEW top_latents AS
SELECT latent, CAST(row_number() OVER (ORDER BY rel_norm, nu_error ASC NULLS LAST, latent) - 1 AS BIGINT) AS ord,
       dec_ft AS vector
FROM latents($dictionary)
WHERE frequency > 0
ORDER BY ord
LIMIT $top_latents;
