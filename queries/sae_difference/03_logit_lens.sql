-- The examined latents' decoder vectors read through the model's final norm and unembedding: the $k tokens
-- each promotes (sign +) and suppresses (sign -).
SELECT t.ord, t.latent, lens.sign, lens.rank, lens.token_id, lens.token, lens.logit, lens.prob
FROM logit_lens(
    (SELECT l.dec FROM latents($dictionary) l JOIN top_latents t ON t.latent = l.latent ORDER BY t.ord),
    $model, $k) lens
JOIN top_latents t ON t.ord = lens.item
ORDER BY t.ord, lens.sign, lens.rank;
