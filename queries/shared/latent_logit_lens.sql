-- (Shared by the dictionary methods: each links it.) The examined latents' or components' vectors, from the
-- method's `top_latents` view, read through the model's final norm and unembedding: the $k tokens each
-- promotes (sign +) and suppresses (sign -).
SELECT t.ord, t.latent, lens.sign, lens.rank, lens.token_id, lens.token, lens.logit, lens.prob
FROM logit_lens((SELECT vector FROM top_latents ORDER BY ord), $model, $k) lens
JOIN top_latents t ON t.ord = lens.item
ORDER BY t.ord, lens.sign, lens.rank;
