-- Fraction of variance explained during training, on the training batches and on held-out tokens.
SELECT tokens, 'train' AS split, fve FROM training_curve($dictionary)
UNION ALL
SELECT tokens, 'validation' AS split, validation_fve AS fve FROM training_curve($dictionary) WHERE validation_fve IS NOT NULL
ORDER BY split, tokens;
