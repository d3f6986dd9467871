-- Mean ‖ft − base‖₂ per layer, over every organism and token in the cache (the seed's `normdiff`).
SELECT layer, normdiff(base, ft) AS normdiff
FROM acts
GROUP BY layer
ORDER BY layer;
