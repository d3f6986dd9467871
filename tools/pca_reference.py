#!/usr/bin/env python3
"""Reference PCA for diffsql's one-pass covariance PCA, computed with numpy (float64 `np.cov` and `np.linalg.eigh`).

Writes tests/fixtures/dictionary/pca_reference.json: 600 correlated float32 rows of length 8 with a large offset
(so a naive E[xx^T] - mu mu^T in float32 would lose digits), their mean, covariance, and the eigenvalues and
eigenvectors, largest first, each eigenvector oriented so its largest-magnitude coordinate is positive.

    python3 tools/pca_reference.py
"""

import json
import os

import numpy as np

rng = np.random.default_rng(7)
d, n = 8, 600
mixing = rng.normal(size=(d, d)) * np.linspace(3.0, 0.1, d)[:, None]
x = (rng.normal(size=(n, d)) @ mixing + 50.0).astype(np.float32)
xd = x.astype(np.float64)
mean = xd.mean(axis=0)
cov = np.cov(xd, rowvar=False)
values, vectors = np.linalg.eigh(cov)
order = np.argsort(values)[::-1]
values, vectors = values[order], vectors[:, order]
for c in range(d):
    v = vectors[:, c]
    if v[np.argmax(np.abs(v))] < 0:
        vectors[:, c] = -v
out = {
    "numpy": np.__version__,
    "d": d,
    "x": x.flatten().tolist(),
    "mean": mean.tolist(),
    "cov": cov.flatten().tolist(),
    "variance": values.tolist(),
    "ratio": (values / values.sum()).tolist(),
    "components": vectors.T.flatten().tolist(),
}
path = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "dictionary", "pca_reference.json")
with open(path, "w") as f:
    json.dump(out, f)
print(f"wrote {os.path.normpath(path)} (numpy {np.__version__})")
