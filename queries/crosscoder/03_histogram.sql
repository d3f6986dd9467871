-- Live latents per bin of relative decoder norm (bins of 0.05, labelled by their lower edge; 0: ft-only,
-- 0.5: shared, 1: base-only).
SELECT CAST(b / 20.0 AS VARCHAR) AS bin, count(*) AS latents
FROM (SELECT least(floor(rel_norm * 20), 19) AS b FROM latents($dictionary) WHERE frequency > 0)
GROUP BY b
ORDER BY b;
