#!/usr/bin/env bash
# What verified reads cost: the card's query (normdiff per layer) on a synthetic bfloat16 cache, one process
# per query, warm page cache: the first process after the cache was written (it hashes every file and keeps
# the verdicts), the next process (verdicts kept: no hashing), a process with --rehash (hashes every file
# again), and the query repeated inside one process; then `diffsql check` (always hashes everything).
#   bench/verify.sh [TOKENS] [D_MODEL]     (default 200000 tokens × 4 layers × d 1152: 3.7 GB of bf16 vectors)
set -euo pipefail
cd "$(dirname "$0")/.."
tokens="${1:-200000}"
d="${2:-1152}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/diffsql-target}"
cargo build --quiet --bin diffsql
bin="$CARGO_TARGET_DIR/debug/diffsql"
cache="bench/data/verify-$tokens-$d"
mkdir -p bench/data
rm -rf "$cache"
"$bin" --cache "$cache" synth --tokens "$tokens" --d-model "$d" --dtype bfloat16 --organisms caps --seed 1 >/dev/null 2>&1
sleep 1  # past the racy window: files this young keep no verdict
q="SELECT layer, normdiff(base, ft) FROM acts WHERE organism = 'caps' GROUP BY layer"
t() { "$bin" --cache "$cache" "$@" sql --timing -c "$q" 2>&1 >/dev/null | sed -n 's/^Time: \([0-9.]*\) s.*hashed \([0-9]*\).*/\1 \2/p'; }
first=$(t); second=$(t); rehash=$(t --rehash)
inproc=$("$bin" --cache "$cache" sql --timing -c "$q" -c "$q" 2>&1 >/dev/null | sed -n 's/^Time: \([0-9.]*\) s.*/\1/p' | tail -1)
start=$(date +%s.%N)
"$bin" --cache "$cache" check 2>/dev/null
check=$(python3 -c "import time; print(f'{time.time() - $start:.2f}')")
size=$(du -sb "$cache" | cut -f1)
python3 -c "
f, s, r = '$first'.split(), '$second'.split(), '$rehash'.split()
gb = $size / 1e9
print('| cache | first process (hashes, keeps verdicts) | next process (kept verdicts) | --rehash | again in one process | diffsql check |')
print('|---|---:|---:|---:|---:|---:|')
print(f'| $tokens tokens × 4 layers × d $d, bf16 ({gb:.2f} GB) | {f[0]} s ({f[1]} files hashed) | {s[0]} s ({s[1]} hashed) | {r[0]} s ({r[1]} hashed) | $inproc s | $check s ({gb / $check:.1f} GB/s) |')
"
