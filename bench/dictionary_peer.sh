#!/usr/bin/env bash
# Dictionary training, diffsql against the reference trainer written in PyTorch (bench/dictionary_peer.py), on
# the same cached activations (the bundled base and caps pair, middle layer), hyperparameters and CPU threads;
# and PCA's one pass against one normdiff scan of the same rows. Prints a table.
#   bench/dictionary_peer.sh [EPOCHS]     EPOCHS: training epochs on both sides (default 8, the method's default)
# Needs torch, numpy and pyarrow.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/diffsql-target}"
cargo build --quiet --bin diffsql
bin="$CARGO_TARGET_DIR/debug/diffsql"
epochs="${1:-8}"
cache=bench/data/dictionary
threads=$(nproc)
mkdir -p bench/data
"$bin" preprocess organism=caps cache_dir="$cache" 2> bench/data/dictionary-preprocess.log || { cat bench/data/dictionary-preprocess.log; exit 1; }
rm -rf "$cache"/dictionaries "$cache"/.staging/dictionary*
row() { printf '| %-16s | %8s | %10s | %10s | %6s | %9s | %9s |\n' "$@"; }
echo "CPU threads: $threads; bundled caps pair, layer 1 (d_model 128); $epochs epochs"
row method tokens "diffsql tok/s" "peer tok/s" ratio "FVE ours" "FVE peer"
row "---" "---" "---" "---" "---" "---" "---"
for kind in crosscoder sae_difference; do
  "$bin" run organism=caps diffing/method=$kind pipeline.mode=diffing cache_dir="$cache" results_dir=bench/data/dictionary-results \
    diffing.method.train.epochs="$epochs" 2> bench/data/dictionary-$kind.log >/dev/null || { cat bench/data/dictionary-$kind.log; exit 1; }
  manifest=$(ls "$cache"/dictionaries/model=shakespeare/organism=caps/name=${kind}_L1/_dictionary.json)
  read -r tokens ours fve_ours <<< "$(python3 -c "import json,sys; m=json.load(open('$manifest')); print(m['train_tokens'], round(m['train_tokens']/m['seconds']), round(m['validation']['fve'],3))")"
  if [ "$kind" = crosscoder ]; then
    peer_args=(--kind crosscoder --expansion 16 --k 32 --k-max 128 --k-anneal-steps 200)
  else
    peer_args=(--kind sae_difference --expansion 2 --k 16 --k-max 16 --k-anneal-steps 0)
  fi
  read -r ptokens pseconds peer fve_peer <<< "$(python3 bench/dictionary_peer.py --cache "$cache" --model shakespeare --organism caps --layer 1 \
    "${peer_args[@]}" --batch 1024 --lr 1e-3 --warmup 50 --epochs "$epochs" --threads "$threads" 2>/dev/null | tail -1)"
  row "$kind" "$tokens" "$ours" "$peer" "$(python3 -c "print(f'{$ours/$peer:.2f}')")" "$fve_ours" "$fve_peer"
done
# PCA: its one covariance pass over ft - base against one normdiff scan of the same (base, ft) rows, both timed
# inside the process (best of 3).
best_pca=0
for _ in 1 2 3; do
  rm -rf "$cache"/dictionaries/model=shakespeare/organism=caps/name=pca_L1
  "$bin" run organism=caps diffing/method=pca pipeline.mode=diffing cache_dir="$cache" results_dir=bench/data/dictionary-results \
    diffing.method.params.top_latents=1 2> bench/data/dictionary-pca.log >/dev/null || { cat bench/data/dictionary-pca.log; exit 1; }
  rate=$(grep -o '[0-9]* rows/s)' bench/data/dictionary-pca.log | tr -dc 0-9)
  [ "$rate" -gt "$best_pca" ] && best_pca=$rate
done
best_scan=999
for _ in 1 2 3; do
  s=$("$bin" sql --cache "$cache" --timing -c "SELECT normdiff(base, ft) FROM acts WHERE organism = 'caps' AND layer = 1" 2>&1 >/dev/null | grep -o 'Time: [0-9.]*' | tr -dc 0-9.)
  best_scan=$(python3 -c "print(min($best_scan, $s))")
done
rows=$("$bin" sql --cache "$cache" --format csv -c "SELECT count(*) AS n FROM acts WHERE organism = 'caps' AND layer = 1" | tail -1)
scan_rate=$(python3 -c "print(round($rows / $best_scan))")
echo
echo "PCA covariance pass: $best_pca rows/s; normdiff scan of the same $rows rows: $scan_rate rows/s ($(python3 -c "print(f'{$best_pca/$scan_rate:.2f}')")×)"
