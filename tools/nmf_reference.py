#!/usr/bin/env python3
"""Reference NMF for diffsql's sparse multiplicative updates, computed densely with numpy in float64.

Writes tests/fixtures/nmf/reference.json: a 40 x 15 non-negative matrix with 30% of its entries set, starting
factors W0 (40 x 3) and T0 (3 x 15), and W, T and the loss ||V - W T||^2 after each of 50 iterations of the
Frobenius multiplicative updates (Lee & Seung 2001) in the order diffsql applies them:

    T <- T * (W^T V) / (W^T W T + eps)
    W <- W * (V T^T) / (W T T^T + eps)        eps = float32 machine epsilon (as scikit-learn)

    python3 tools/nmf_reference.py
"""

import json
import os

import numpy as np

rng = np.random.default_rng(11)
rows, columns, rank, iterations = 40, 15, 3, 50
eps = float(np.finfo(np.float32).eps)
mask = rng.random((rows, columns)) < 0.3
v = np.where(mask, rng.random((rows, columns)) * 4.0, 0.0).astype(np.float32).astype(np.float64)
w0 = rng.random((rows, rank))
t0 = rng.random((rank, columns))
w, t = w0.copy(), t0.copy()
loss = []
for _ in range(iterations):
    t = t * (w.T @ v) / (w.T @ w @ t + eps)
    w = w * (v @ t.T) / (w @ t @ t.T + eps)
    loss.append(float(np.sum((v - w @ t) ** 2)))
r, c = np.nonzero(v)
out = {
    "rows": rows,
    "columns": columns,
    "rank": rank,
    "iterations": iterations,
    "triplets": [[int(i), int(j), float(v[i, j])] for i, j in zip(r, c)],
    "w0": w0.ravel().tolist(),
    "t0": t0.ravel().tolist(),
    "w": w.ravel().tolist(),
    "t": t.ravel().tolist(),
    "loss": loss,
}
path = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "nmf", "reference.json")
with open(path, "w") as f:
    json.dump(out, f)
print(f"wrote {path}: {len(out['triplets'])} entries, final loss {loss[-1]:.6f}")
