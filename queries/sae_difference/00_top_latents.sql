-- Setup: the latents examined in detail: those that carry most of ft − base on held-out tokens (frequency ×
-- mean activation; decoder vectors have unit norm). `ord` numbers them from 0 in that order; `vector` is the
-- decoder.
CREATE VIEW top_latents AS
SELECT latent, CAST(row_number() OVER (ORDER BY frequency * mean_activation DESC, latent) - 1 AS BIGINT) AS ord,
       dec AS vector
FROM latents($dictionary)
WHERE frequency > 0
ORDER BY ord
LIMIT $top_latents;
