#!/usr/bin/env python3
"""Scan benchmark: diffsql vs DuckDB vs numpy over the same synthetic activations.

Builds (once, under --data) a synthetic cache with `diffsql synth` in float32 and bfloat16, the same float32
vectors as raw memmaps (the seed's own cache format) and as Parquet list columns (the layout DuckDB computes
on), then times, warm, two queries per engine:

  normdiff:  SELECT layer, normdiff(base, ft) FROM acts GROUP BY layer
  cosine:    SELECT layer, avg(cosine_sim(base, ft)) FROM acts GROUP BY layer

Every engine gets 2 threads (DuckDB `SET threads=2`, diffsql target_partitions=2 on this 2-core machine;
numpy is single-threaded as the seed uses it). Each figure is the best of --repeat runs after one warm-up.
Results are checked against each other (normdiff of organism caps at layer L is L+1 by construction).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def build_caches(args, dtypes=("float32", "bfloat16")):
    for dtype in dtypes:
        cache = args.data / dtype
        if (cache / "sequences").exists():
            continue
        t = time.time()
        sh([args.diffsql, "--cache", str(cache), "synth", "--tokens", str(args.tokens), "--d-model", str(args.d),
            "--layers", ",".join(map(str, range(args.layers))), "--dtype", dtype, "--organisms", "caps",
            "--seed", "1"])
        print(f"synth {dtype}: {time.time() - t:.0f} s", file=sys.stderr)


def load_vectors(cache, organism, layer):
    """The README's recipe: vectors of one partition as float32 (rows, d)."""
    t = ds.dataset(f"{cache}/activations", format="parquet", partitioning="hive").to_table(
        filter=(ds.field("organism") == organism) & (ds.field("layer") == layer), columns=["act"])
    col = t.column("act").combine_chunks()
    d = col.type.byte_width // 4
    raw = np.frombuffer(col.buffers()[1], dtype="<f4")
    return raw[col.offset * d:(col.offset + len(col)) * d].reshape(len(col), d)


def build_baselines(args, duckdb=True):
    f32 = args.data / "float32"
    raw = args.data / "raw"
    duck = args.data / "duckdb"
    if not (raw / "done").exists():
        raw.mkdir(parents=True, exist_ok=True)
        for layer in range(args.layers):
            for organism, name in (("base", "base"), ("caps", "ft")):
                v = load_vectors(f32, organism, layer)
                mm = np.lib.format.open_memmap(raw / f"{name}_L{layer}.npy", mode="w+", dtype=np.float32, shape=v.shape)
                mm[:] = v
                mm.flush()
                del mm
        (raw / "done").write_text("")
    if duckdb and not (duck / "done").exists():
        duck.mkdir(parents=True, exist_ok=True)
        for layer in range(args.layers):
            base = np.load(raw / f"base_L{layer}.npy", mmap_mode="r")
            ft = np.load(raw / f"ft_L{layer}.npy", mmap_mode="r")
            d = base.shape[1]
            out = duck / f"layer={layer}"
            out.mkdir(exist_ok=True)
            writer = None
            for start in range(0, base.shape[0], 16384):
                b = np.ascontiguousarray(base[start:start + 16384])
                f = np.ascontiguousarray(ft[start:start + 16384])
                table = pa.table({
                    "base": pa.FixedSizeListArray.from_arrays(pa.array(b.ravel()), d),
                    "ft": pa.FixedSizeListArray.from_arrays(pa.array(f.ravel()), d),
                })
                if writer is None:
                    writer = pq.ParquetWriter(out / "data.parquet", table.schema, compression="none")
                writer.write_table(table, row_group_size=16384)
            writer.close()
        (duck / "done").write_text("")


def best(fn, repeat):
    fn()  # warm-up
    times = []
    result = None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def run_diffsql(args, cache, sql):
    def once():
        out = sh([args.diffsql, "--cache", str(cache), "sql", "--timing", "--format", "csv", "-c", sql])
        seconds = float(re.search(r"Time: ([0-9.]+) s", out.stderr).group(1))
        rows = [line.split(",") for line in out.stdout.strip().splitlines()[1:]]
        return seconds, {int(r[0]): float(r[1]) for r in rows}
    once()
    runs = [once() for _ in range(args.repeat)]
    return min(r[0] for r in runs), runs[-1][1]


def run_duckdb(args, fn_name):
    import duckdb
    con = duckdb.connect()
    con.execute("SET threads=2")
    glob = str(args.data / "duckdb" / "*" / "*.parquet")
    expr = {"distance": "avg(list_distance(base, ft))", "cosine": "avg(list_cosine_similarity(base, ft))"}[fn_name]
    sql = f"SELECT layer, {expr} FROM read_parquet('{glob}', hive_partitioning=true) GROUP BY layer"
    seconds, rows = best(lambda: con.execute(sql).fetchall(), args.repeat)
    return seconds, {int(r[0]): float(r[1]) for r in rows}


def run_numpy(args, what):
    raw = args.data / "raw"

    def once():
        result = {}
        for layer in range(args.layers):
            base = np.load(raw / f"base_L{layer}.npy", mmap_mode="r")
            ft = np.load(raw / f"ft_L{layer}.npy", mmap_mode="r")
            total = 0.0
            for start in range(0, base.shape[0], 8192):
                b = base[start:start + 8192]
                f = ft[start:start + 8192]
                if what == "distance":
                    total += float(np.linalg.norm(f - b, axis=1).sum())
                else:
                    total += float(((b * f).sum(1) / (np.linalg.norm(b, axis=1) * np.linalg.norm(f, axis=1))).sum())
            result[layer] = total / base.shape[0]
        return result
    return best(once, args.repeat)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--diffsql", required=True)
    p.add_argument("--data", type=Path, default=Path(__file__).parent / "data")
    p.add_argument("--tokens", type=int, default=200_000)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d", type=int, default=1152)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    build_caches(args)
    build_baselines(args)

    pairs = args.tokens * args.layers
    results = []
    queries = {
        "normdiff": ("SELECT layer, normdiff(base, ft) FROM acts GROUP BY layer", "distance"),
        "cosine": ("SELECT layer, avg(cosine_sim(base, ft)) FROM acts GROUP BY layer", "cosine"),
    }
    for qname, (sql, kind) in queries.items():
        runs = [
            ("diffsql, float32 cache", lambda: run_diffsql(args, args.data / "float32", sql), 4),
            ("diffsql, bfloat16 cache", lambda: run_diffsql(args, args.data / "bfloat16", sql), 2),
            ("DuckDB, float32 list Parquet", lambda: run_duckdb(args, kind), 4),
            ("numpy, float32 memmaps", lambda: run_numpy(args, kind), 4),
        ]
        answers = {}
        for engine, fn, width in runs:
            seconds, values = fn()
            answers[engine] = values
            gb = pairs * 2 * args.d * width / 1e9
            results.append({"query": qname, "engine": engine, "seconds": seconds, "pairs_per_s": pairs / seconds,
                            "gb_per_s": gb / seconds, "gb": gb})
            print(f"{qname:9} {engine:30} {seconds:7.3f} s  {pairs / seconds / 1e6:6.2f} M pairs/s  {gb / seconds:6.2f} GB/s",
                  file=sys.stderr)
        ref = answers["numpy, float32 memmaps"]
        for engine, values in answers.items():
            tol = 1e-2 if "bfloat16" in engine else 1e-4
            for layer, v in ref.items():
                assert abs(values[layer] - v) <= tol * max(abs(v), 1e-3), (qname, engine, layer, values[layer], v)
        if qname == "normdiff":
            for layer, v in ref.items():
                assert abs(v - (layer + 1)) < 1e-4, (layer, v)

    print("| query | engine | time (s) | M token pairs/s | GB/s of vectors |")
    print("|---|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['query']} | {r['engine']} | {r['seconds']:.3f} | {r['pairs_per_s'] / 1e6:.2f} | {r['gb_per_s']:.2f} |")
    (args.data / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
