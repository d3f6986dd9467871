#!/usr/bin/env python3
"""diffsql from Python against the binary and against plain pyarrow + numpy, on one cache.

    python bench/python_peer.py CACHE [LAYER]      (in the venv of python/run-tests; DIFFSQL_BIN names the binary)

1. The card query (normdiff per layer over `acts`) through `diffsql.connect` vs the same query in the binary
   (`\\timing`, so process start and session opening are left out on both sides); best of 3 after a warm-up.
2. `diffsql.vectors` of one layer's base-model vectors vs reading the same Parquet files with pyarrow and
   decoding the fixed-size binary column with numpy (bfloat16 bits shifted into float32); best of 3.
3. A table function with a subquery argument (`nmf` over per-token norms of one layer) through the context,
   where the subquery runs first and its rows are handed over, vs the binary (`\timing`); best of 3.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds

import diffsql

cache = Path(sys.argv[1])
layer = int(sys.argv[2]) if len(sys.argv) > 2 else 1
binary = os.environ.get("DIFFSQL_BIN", str(Path.home() / ".cache/diffsql-target/debug/diffsql"))
card = "SELECT layer, normdiff(base, ft) FROM acts GROUP BY layer ORDER BY layer"


def best(f, n=3):
    f()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times)


ctx = diffsql.connect(cache)
python_card = best(lambda: ctx.sql(card).collect())
# One process, the query four times: the first (a warm-up, which also checksums every file once per process,
# as `connect`'s first query does) is left out, as on the Python side.
run = subprocess.run([binary, "--cache", str(cache), "sql", "-c", "\\timing on", *["-c", card] * 4],
                     capture_output=True, text=True, check=True)
binary_card = min(float(t) for t in re.findall(r"Time: ([\d.]+) s", run.stdout + run.stderr)[1:])

model = next((cache / "activations").iterdir()).name.split("=", 1)[1]
query = f"SELECT act FROM activations WHERE organism = 'base' AND layer = {layer}"
python_vectors = best(lambda: diffsql.vectors(ctx.sql(query).to_arrow_table(), "act"))
folder = cache / f"activations/model={model}/organism=base/layer={layer}"


def plain():
    table = ds.dataset(folder, format="parquet").to_table(columns=["act"])
    field = table.schema.field("act")
    dtype = field.metadata[b"diffsql.dtype"].decode()
    d = int(field.metadata[b"diffsql.d_model"])
    raw = np.frombuffer(b"".join(c.buffers()[1].to_pybytes() for c in table["act"].chunks), dtype=np.uint8)
    if dtype == "bfloat16":
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(-1, d)
    return raw.view(np.float16 if dtype == "float16" else np.float32).astype(np.float32).reshape(-1, d)


plain_vectors = best(plain)
# The same vectors (a query without ORDER BY may return the files' rows in another order).
a, b = plain(), diffsql.vectors(ctx.sql(query).to_arrow_table(), "act")
assert a.shape == b.shape and np.array_equal(np.sort(a.sum(1, dtype=np.float64)), np.sort(b.sum(1, dtype=np.float64)))
topics = (f"SELECT count(*) AS n, sum(weight) AS w FROM nmf((SELECT struct(seq_id, pos % 64, vec_norm(ft)) "
          f"FROM acts WHERE layer = {layer} AND organism = 'caps'), 4, 30)")
python_topics = best(lambda: ctx.sql(topics).collect())
run = subprocess.run([binary, "--cache", str(cache), "sql", "-c", "\\timing on", *["-c", topics] * 4],
                     capture_output=True, text=True, check=True)
binary_topics = min(float(t) for t in re.findall(r"Time: ([\d.]+) s", run.stdout + run.stderr)[1:])
print("| what | diffsql from Python | peer | ratio |")
print("|---|---:|---:|---:|")
print(f"| card query (normdiff per layer) | {python_card:.3f} s | binary {binary_card:.3f} s | {python_card / binary_card:.2f} |")
print(f"| nmf over a subquery of one layer | {python_topics:.3f} s | binary {binary_topics:.3f} s | {python_topics / binary_topics:.2f} |")
print(f"| one layer's vectors as (n, d) float32 | {python_vectors:.3f} s | pyarrow + numpy {plain_vectors:.3f} s | {python_vectors / plain_vectors:.2f} |")
