#!/usr/bin/env bash
# `diffsql generate` against transformers' `generate` (bench/generate_peer.py): greedy, the same model file,
# prompts, new tokens and CPU threads; a table row per batch size. The base model's timing is used (diffsql
# generates with the organism too: here the same file).
#   bench/generate_peer.sh DIR [NEW_TOKENS]   DIR from tools/fetch-real-models.sh (DIR/smollm2-135m)
# Needs torch, transformers and gguf.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/diffsql-target}"
cargo build --quiet --bin diffsql
bin="$CARGO_TARGET_DIR/debug/diffsql"
dir="${1:?usage: bench/generate_peer.sh DIR [NEW_TOKENS]}"; new="${2:-64}"
model="$dir/smollm2-135m"
prompts=$(python3 -c "
import sys; sys.path.insert(0, 'bench'); from generate_peer import PROMPTS
print('\n'.join(PROMPTS))")
echo "| batch | new tokens | diffsql tokens/s | transformers tokens/s | ratio |"
echo "|---|---|---|---|---|"
for batch in 1 8; do
  args=()
  while IFS= read -r p; do args+=(--prompt "$p"); done < <(echo "$prompts" | head -n "$batch")
  ours=$("$bin" generate model=SmolLM2-135M "model.source=$model/model.gguf" \
    "+organism.finetuned.SmolLM2-135M.source=$model/model.gguf" organism=caps \
    --max-new-tokens "$new" "${args[@]}" 2>&1 >/dev/null | grep '^base:')
  peer=$(python3 bench/generate_peer.py --model "$model" --batch "$batch" --new-tokens "$new" 2>/dev/null | tail -1)
  python3 - "$batch" "$ours" "$peer" <<'PY'
import re, sys
batch, ours, peer = sys.argv[1:]
rate = lambda s: float(re.search(r"\(([\d.]+) tokens/s\)", s).group(1))
count = lambda s: int(re.search(r"(\d+) new tokens", s).group(1))
print(f"| {batch} | {count(ours)} / {count(peer)} | {rate(ours):.1f} | {rate(peer):.1f} | {rate(ours) / rate(peer):.2f}× |")
PY
done
