#!/usr/bin/env python3
"""Server time of every dashboard page (the Server-Timing header `diffsql serve` sends), median and worst of
--repeat loads, on the bundled results and on a 1M-token synthetic cache.

  python3 bench/serve_bench.py --data DIR        # DIR has cache/ and results/ (e.g. from ./quickstart: .)
  python3 bench/serve_bench.py --data . --large  # also the 1M-token cache (made once in bench/data/serve-1m)

Prints a Markdown table (bench/README.md keeps the measured one).
"""

import argparse
import os
import pathlib
import queue
import re
import statistics
import subprocess
import sys
import threading
import urllib.parse
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[1]
BIN = os.environ.get(
    "DIFFSQL_BIN",
    str(pathlib.Path(os.environ.get("CARGO_TARGET_DIR", pathlib.Path.home() / ".cache/diffsql-target")) / "debug/diffsql"),
)
CARD = "SELECT organism, layer, normdiff(base, ft) AS normdiff FROM acts GROUP BY organism, layer ORDER BY organism, layer"


def serve(cache, results):
    p = subprocess.Popen([BIN, "--cache", str(cache), "serve", "--port", "0", f"results_dir={results}"],
                         cwd=REPO, stdout=subprocess.PIPE, text=True)
    url = re.search(r"(http://\S+/)", p.stdout.readline()).group(1)
    # "warmed up in X s": what a first load would otherwise wait for has been read (at most a minute's wait).
    lines = queue.Queue()
    threading.Thread(target=lambda: lines.put(p.stdout.readline()), daemon=True).start()
    try:
        print(f"  {cache}: {lines.get(timeout=60).strip()}", file=sys.stderr)
    except queue.Empty:
        print(f"  {cache}: not warmed up after 60 s; measuring anyway", file=sys.stderr)
    return p, url


def timed(url):
    with urllib.request.urlopen(url, timeout=120) as r:
        r.read()
        header = r.headers.get("server-timing", "")
        if r.status != 200:
            raise RuntimeError(f"{url}: {r.status}")
    return float(re.search(r"dur=([0-9.]+)", header).group(1))


def measure(name, url, repeat, rows):
    first = timed(url)  # the first load after the server's warm-up
    times = [timed(url) for _ in range(repeat)]
    rows.append((name, first, statistics.median(times), max(times)))


def measure_pages(data, label, pages, repeat, rows):
    """Serves `data`'s cache and results and measures each (name, path) of `pages`."""
    p, url = serve(data / "cache", data / "results")
    try:
        for name, path in pages:
            measure(f"{label}: {name}", url + path, repeat, rows)
    finally:
        p.terminate()
        p.wait(timeout=30)


def bundled(data, repeat, rows):
    first = subprocess.run([BIN, "--cache", str(data / "cache"), "sql", "--format", "csv", "-c",
                            "SELECT dataset, seq_id FROM sequences ORDER BY n_tokens DESC LIMIT 1"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.splitlines()[1].split(",")
    pages = [("overview", "")]
    for m in ["kl", "normdiff", "adl", "diff_mining"]:
        pages.append((f"method {m}", f"results/shakespeare/caps/{m}"))
    pages += [
        ("kl top_tokens, sorted, page 2", "results/shakespeare/caps/kl/table/top_tokens?sort=kl&desc=1&page=1"),
        ("token list", "tokens?organism=caps"),
        ("sequence (longest), KL", f"tokens?organism=caps&dataset={first[0]}&seq={first[1]}"),
        ("sequence (longest), normdiff L1", f"tokens?organism=caps&dataset={first[0]}&seq={first[1]}&color=normdiff&layer=1"),
        ("token detail (JSON)", f"api/token?model=shakespeare&organism=caps&dataset={first[0]}&seq={first[1]}&pos=3"),
        ("SQL console, card query", "sql?q=" + urllib.parse.quote(CARD)),
        ("chat page", "chat"),
    ]
    measure_pages(data, "bundled", pages, repeat, rows)


def large(repeat, rows):
    data = REPO / "bench/data/serve-1m"
    if not (data / "cache").is_dir():
        subprocess.run([BIN, "--cache", str(data / "cache"), "synth", "--model", "large", "--tokens", "1000000",
                        "--seq-len", "1000", "--d-model", "64", "--layers", "0,1"], cwd=REPO, check=True)
    (data / "results").mkdir(parents=True, exist_ok=True)
    pages = [
        ("overview", ""),
        ("token list (1000 sequences by mean KL)", "tokens?model=large&organism=caps"),
        ("sequence 500, KL", "tokens?model=large&organism=caps&dataset=synthetic&seq=500"),
        ("sequence 500, normdiff L1", "tokens?model=large&organism=caps&dataset=synthetic&seq=500&color=normdiff&layer=1"),
        ("token detail (JSON)", "api/token?model=large&organism=caps&dataset=synthetic&seq=500&pos=7"),
    ]
    measure_pages(data, "1M tokens", pages, repeat, rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=pathlib.Path, required=True, help="folder with cache/ and results/")
    ap.add_argument("--large", action="store_true", help="also a 1M-token synthetic cache")
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    rows = []
    bundled(args.data.resolve(), args.repeat, rows)
    if args.large:
        large(args.repeat, rows)
    print(f"| page | first load ms | median ms | worst ms (of {args.repeat}) |")
    print("|---|---:|---:|---:|")
    for name, first, med, worst in rows:
        print(f"| {name} | {first:.1f} | {med:.1f} | {worst:.1f} |")
    slow = [r for r in rows if r[2] >= 200]
    if slow:
        print(f"over 200 ms: {', '.join(r[0] for r in slow)}", file=sys.stderr)


if __name__ == "__main__":
    main()
