#!/usr/bin/env bash
# The normdiff method's full query set against one scan of the same data, on a synthetic cache of 1M tokens
# × 4 layers (d_model 256, bfloat16; ~4 GB per cache under bench/data/diffing). Prints a table row.
#   bench/diffing.sh [TOKENS] [NOISE]   NOISE: std of noise on organism vectors (0: every token's norm
#                                       difference ties within a layer, the worst case for top-k ranking)
set -euo pipefail
cd "$(dirname "$0")/.."
tokens="${1:-1000000}"
noise="${2:-0}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/diffsql-target}"
cargo build --quiet --bin diffsql
bin="$CARGO_TARGET_DIR/debug/diffsql"
data=bench/data/diffing
cache="$data/cache-$tokens-$noise"
mkdir -p "$data"
"$bin" --cache "$cache" synth --tokens "$tokens" --d-model 256 --dtype bfloat16 --organisms caps --seq-len 128 --noise "$noise" >/dev/null
# The synthetic model is not a config: give it one in a copy of the configs (diffing needs no weights).
rm -rf "$data/configs" && cp -r configs "$data/configs"
printf 'source = "unused"\n' > "$data/configs/model/synthetic.toml"
now() { date +%s.%N; }
t0=$(now)
"$bin" --cache "$cache" sql -c "SELECT layer, normdiff(base, ft) FROM acts WHERE organism = 'caps' GROUP BY layer" >/dev/null
t1=$(now)
"$bin" --configs "$data/configs" run pipeline.mode=diffing diffing/method=normdiff model=synthetic organism=caps \
  cache_dir="$cache" results_dir="$data/results" 2>/dev/null
python3 -c "import json; s = json.load(open('$data/results/synthetic/caps/normdiff/summary.json')); print('per query:', ', '.join(f\"{t['name']} {t['seconds']:.2f} s\" for t in s['tables']))" >&2
t2=$(now)
python3 -c "
scan, full = $t1 - $t0, $t2 - $t1
print('| tokens | noise | one scan (normdiff per layer) | normdiff method, all queries | ratio |')
print('|---|---|---|---|---|')
print(f'| $tokens × 4 layers | $noise | {scan:.2f} s | {full:.2f} s | {full / scan:.2f} |')
"
