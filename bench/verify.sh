#!/usr/bin/env bash
# What verified reads cost: the card's query (normdiff per layer) three times in one process on a synthetic
# bfloat16 cache, so the first run pays for checking every file against its manifest (sizes and xxh3) and the
# next two do not (a file's checksum is checked once per process); then `diffsql check` alone.
#   bench/verify.sh [TOKENS] [D_MODEL]     (default 200000 tokens × 4 layers × d 1152: 7.4 GB of vectors)
set -euo pipefail
cd "$(dirname "$0")/.."
tokens="${1:-200000}"
d="${2:-1152}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/diffsql-target}"
cargo build --quiet --bin diffsql
bin="$CARGO_TARGET_DIR/debug/diffsql"
cache="bench/data/verify-$tokens-$d"
mkdir -p bench/data
"$bin" --cache "$cache" synth --tokens "$tokens" --d-model "$d" --dtype bfloat16 --organisms caps --seed 1 >/dev/null 2>&1
q="SELECT layer, normdiff(base, ft) FROM acts WHERE organism = 'caps' GROUP BY layer"
# Drop nothing from the page cache: every run reads warm files, so the figures are CPU cost, not disk.
"$bin" --cache "$cache" sql -c "$q" >/dev/null
times=$("$bin" --cache "$cache" sql --timing -c "$q" -c "$q" -c "$q" 2>&1 >/dev/null | sed -n 's/^Time: \([0-9.]*\) s.*/\1/p' | tr '\n' ' ')
start=$(date +%s.%N)
"$bin" --cache "$cache" check 2>/dev/null
check=$(python3 -c "import time; print(f'{time.time() - $start:.2f}')")
size=$(du -sb "$cache" | cut -f1)
python3 -c "
t = [float(x) for x in '$times'.split()]
gb = $size / 1e9
print('| cache | first query (verifies every file) | second | third | verification share of the first | diffsql check |')
print('|---|---:|---:|---:|---:|---:|')
print(f'| $tokens tokens × 4 layers × d $d, bf16 ({gb:.2f} GB) | {t[0]:.2f} s | {t[1]:.2f} s | {t[2]:.2f} s | {(t[0] - min(t[1:])) / t[0]:.0%} | $check s ({gb / $check:.1f} GB/s) |')
"
