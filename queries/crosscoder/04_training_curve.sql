-- Fraction of variance explained during training, on the training batches and on held-out tokens
-- (fve_shown: the same, clipped at 0 for the chart, since the first points from the random start lie far below).
SELECT tokens, 'train' AS split, fve, greatest(fve, 0) AS fve_shown FROM training_curve($dictionary)
UNION ALL
SELECT tokens, 'validation' AS split, validation_fve AS fve, greatest(validation_fve, 0) AS fve_shown
FROM training_curve($dictionary) WHERE validation_fve IS NOT NULL
ORDER BY split, tokens;
