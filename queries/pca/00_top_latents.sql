-- Setup: the components examined in detail, largest variance first (`latent` is the component index).
CREATE VIEW top_latents AS
SELECT latent, CAST(latent AS BIGINT) AS ord FROM latents($dictionary) WHERE latent < $top_latents;
