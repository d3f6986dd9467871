-- Setup: the mean difference over positions $first_position .. $positions - 1 read by patchscope on the organism
-- at a grid of scales (× the identity prompt's mean residual norm at the layer): the $k tokens it makes most
-- likely after the patched `?`, per scale. Kept for the next queries (patchscope runs once).
CREATE TABLE adl_patchscope AS
SELECT scale, rank, token_id, token, prob
FROM patchscope($side,
    (SELECT mean_diff(base, ft) FROM acts
     WHERE model = $model AND organism = $organism AND dataset = $dataset AND layer = $layer
       AND pos BETWEEN $first_position AND $positions - 1),
    $layer, [0.25, 0.5, 1.0, 2.0, 4.0, 8.0], $k);
