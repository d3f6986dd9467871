#!/usr/bin/env bash
# End-to-end preprocessing throughput on the bundled pair against the forward-only throughput of the same two
# models (batch × context 128, as preprocessing runs them), and bytes per token per layer against raw.
#   bench/preprocess.sh [BATCH]    (default 32; prints a table; writes a scratch cache under bench/data/preprocess)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/diffsql-target}"
cargo build --quiet --bin diffsql --example forward_bench   # dev profile: the numeric crates are optimised
bin="$CARGO_TARGET_DIR/debug/diffsql"
fwd="$CARGO_TARGET_DIR/debug/examples/forward_bench"
cache=bench/data/preprocess
batch="${1:-32}"
rate() { "$fwd" "$1" "$batch" 128 5 | awk '{print $1}'; }
base=$(rate bundled/models/base)
caps=$(rate bundled/models/caps)
# Both models run per batch: the pair's forward-only rate is the harmonic combination.
pair=$(python3 -c "print(round(1 / (1 / $base + 1 / $caps)))")
rm -rf "$cache"; mkdir -p bench/data
start=$(date +%s.%N)
"$bin" preprocess organism=caps cache_dir="$cache" preprocessing.batch_size="$batch" 2> bench/data/preprocess.log
end=$(date +%s.%N)
tokens=$(grep -o '[0-9]* tokens,' bench/data/preprocess.log | head -1 | awk '{print $1}')
e2e=$(python3 -c "print(round($tokens / ($end - $start)))")
bytes=$("$bin" --cache "$cache" sql --format csv -c "SELECT sum(bytes) * 1.0 / sum(rows) AS b FROM cache_info() WHERE table_name = 'activations'" | tail -1)
raw=$("$bin" --cache "$cache" sql --format csv -c "SELECT max(d_model) * 2 AS raw FROM cache_info() WHERE table_name = 'activations'" | tail -1)
echo "| batch | forward only, base | forward only, caps | forward only, pair | preprocess end to end (wall) | ratio | bytes/token/layer | raw bf16 | ratio |"
echo "|---|---|---|---|---|---|---|---|---|"
python3 -c "print(f'| $batch × 128 | {$base:.0f} tok/s | {$caps:.0f} tok/s | {$pair} tok/s | {$e2e} tok/s | {$e2e/$pair:.2f} | {$bytes:.1f} | {$raw} | {$bytes/$raw:.3f} |')"
