#!/usr/bin/env python3
"""One query, one process, as a user runs it: `diffsql --cache C sql -c "normdiff per layer"` timed from
outside (process start to exit, checks on), against numpy over memmaps of the same float32 vectors with the
same 2 threads (timed inside Python: its start-up and imports are not counted), and against the memory
bound (2 threads reading every vector byte once from the page cache, the fastest of a few read kernels).
Also the same query a second time inside one diffsql process, and the share of vector pages the scan read
in place. Warm page cache; best of --repeat after one warm-up each.

With --fresh-page-cache (root only) the page cache is dropped first and both copies of the vectors are read
once sequentially, so that both sides map the same kind of page-cache folios: how a file came into the page
cache changes what mapping it costs (measured: 1.20-1.31× the bound after a sequential read, 1.6-1.7× after
other caches had pushed parts of it out and page faults had read them back).

The caches come from `diffsql synth` (200,000 tokens × 4 layers × d 1152, base + caps: 7.37 GB of float32
vectors) under --data; numpy reads the same vectors from .npy memmaps (bench/scan.py's baselines).
"""

import argparse
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import scan  # noqa: E402

QUERY = "SELECT layer, normdiff(base, ft) FROM acts WHERE organism = 'caps' GROUP BY layer ORDER BY layer"
THREADS = 2
CHUNK = 8192


def best(fn, repeat):
    fn()
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def diffsql_oneshot(args, cache):
    def once():
        out = subprocess.run([args.diffsql, "--cache", str(cache), "sql", "--format", "csv", "-c", QUERY],
                             check=True, capture_output=True, text=True).stdout
        return {int(l.split(",")[0]): float(l.split(",")[1]) for l in out.splitlines()[1:]}
    return best(once, args.repeat)


def diffsql_in_process(args, cache):
    cmds = sum((["-c", QUERY] for _ in range(args.repeat + 1)), [])
    run = subprocess.run([args.diffsql, "--cache", str(cache), "sql", "--timing", "--format", "csv", *cmds],
                         check=True, capture_output=True, text=True)
    times = [float(t) for t in re.findall(r"Time: ([0-9.]+) s", run.stderr)]
    return min(times[1:]), run.stderr.splitlines()[0]


def split_rows(n):
    step = (n + THREADS - 1) // THREADS
    return [(s, min(s + step, n)) for s in range(0, n, step)]


def numpy_normdiff(raw, layers):
    pool = ThreadPoolExecutor(THREADS)

    def part(base, ft, lo, hi):
        total = 0.0
        for s in range(lo, hi, CHUNK):
            e = min(s + CHUNK, hi)
            total += float(np.linalg.norm(ft[s:e] - base[s:e], axis=1).sum())
        return total

    def once():
        result = {}
        for layer in range(layers):
            base = np.load(raw / f"base_L{layer}.npy", mmap_mode="r")
            ft = np.load(raw / f"ft_L{layer}.npy", mmap_mode="r")
            parts = [pool.submit(part, base, ft, lo, hi) for lo, hi in split_rows(base.shape[0])]
            result[layer] = sum(p.result() for p in parts) / base.shape[0]
        return result
    return once


def memory_bound(raw, layers, repeat):
    """2 threads reading every vector byte once: the fastest of a few reductions that do almost nothing."""
    pool = ThreadPoolExecutor(THREADS)
    arrays = [np.load(raw / f"{side}_L{layer}.npy", mmap_mode="r") for layer in range(layers) for side in ("base", "ft")]
    kernels = {
        "uint64 sum": lambda x: int(x.view(np.uint64).sum()),
        "float32 max": lambda x: float(x.max()),
        "uint64 bitwise or": lambda x: int(np.bitwise_or.reduce(x.view(np.uint64), axis=None)),
    }
    results = {}
    for name, kernel in kernels.items():
        def part(a, lo, hi):
            for s in range(lo, hi, CHUNK):
                kernel(a[s:min(s + CHUNK, hi)])

        def once():
            for a in arrays:
                for f in [pool.submit(part, a, lo, hi) for lo, hi in split_rows(a.shape[0])]:
                    f.result()
        results[name] = best(once, repeat)[0]
    return min(results.values()), results


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--diffsql", required=True)
    p.add_argument("--data", type=Path, default=Path(__file__).parent / "data" / "oneshot")
    p.add_argument("--tokens", type=int, default=200_000)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d", type=int, default=1152)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--label", default="diffsql")
    p.add_argument("--fresh-page-cache", action="store_true")
    args = p.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    scan.build_caches(args, dtypes=("float32",))
    scan.build_baselines(args, duckdb=False)
    cache, raw = args.data / "float32", args.data / "raw"
    gb = args.tokens * args.layers * 2 * args.d * 4 / 1e9
    if args.fresh_page_cache:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        for f in sorted(list(raw.glob("*.npy")) + list(cache.rglob("*.parquet"))):
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass

    bound, kernels = memory_bound(raw, args.layers, args.repeat)
    print("memory bound kernels: " + ", ".join(f"{k} {v:.3f} s" for k, v in kernels.items()), file=sys.stderr)
    numpy_s, numpy_r = best(numpy_normdiff(raw, args.layers), args.repeat)
    oneshot_s, oneshot_r = diffsql_oneshot(args, cache)
    inproc_s, _ = diffsql_in_process(args, cache)
    for layer, v in numpy_r.items():
        assert abs(v - (layer + 1)) < 1e-4, ("numpy", layer, v)
        assert abs(oneshot_r[layer] - v) <= 1e-4 * v, ("diffsql", layer, oneshot_r[layer], v)
    print(f"| engine | time (s) | GB/s | × memory bound |")
    print(f"|---|---:|---:|---:|")
    for name, s in ((f"{args.label}: one process per query (wall)", oneshot_s),
                    (f"{args.label}: same query again in one process", inproc_s),
                    ("numpy, 2 threads over memmaps (in Python)", numpy_s),
                    ("memory bound: 2 threads reading every byte", bound)):
        print(f"| {name} | {s:.3f} | {gb / s:.2f} | {s / bound:.2f} |")


if __name__ == "__main__":
    main()
