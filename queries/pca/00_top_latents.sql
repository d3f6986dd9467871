-- Setup: the components examined in detail, largest variance first (`latent` is the component index, `vector`
-- the component, oriented the way ft − base moves on average).
CREATE VIEW top_latents AS
SELECT latent, CAST(latent AS BIGINT) AS ord, dec AS vector FROM latents($dictionary) WHERE latent < $top_latents;
