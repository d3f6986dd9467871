#!/usr/bin/env bash
# diffsql preprocess against the reference preprocessing done plainly in transformers (bench/preprocess_peer.py)
# on the same tokens, batches, layers and CPU threads; prints a table row per model pair.
#   bench/preprocess_peer.sh smollm2 DIR [SAMPLES]   DIR from tools/fetch-real-models.sh (DIR/smollm2-135m), the
#                                                    GGUF as base and as organism (a finetune costs the same)
#   bench/preprocess_peer.sh bundled [SAMPLES]       the bundled base and caps pair
# SAMPLES: pretraining samples (default 256; context 128, batch 32). Needs torch, transformers, gguf, pyarrow.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/diffsql-target}"
cargo build --quiet --bin diffsql
bin="$CARGO_TARGET_DIR/debug/diffsql"
which="${1:?usage: bench/preprocess_peer.sh smollm2 DIR [SAMPLES] | bundled [SAMPLES]}"
if [ "$which" = smollm2 ]; then
  dir="${2:?the directory of tools/fetch-real-models.sh}"; samples="${3:-256}"
  model="$dir/smollm2-135m"; organism="$model"; layers=7,14,21,29
  args=(model=SmolLM2-135M "model.source=$model/model.gguf" "+organism.finetuned.SmolLM2-135M.source=$model/model.gguf")
else
  samples="${2:-256}"
  model=bundled/models/base; organism=bundled/models/caps; layers=0,1,2,3
  args=(organism=caps)
fi
cache=bench/data/peer-$which
rm -rf "$cache"; mkdir -p bench/data
"$bin" preprocess "${args[@]}" 'dataset=[shakespeare_pretrain]' preprocessing.max_samples="$samples" \
  preprocessing.batch_size=32 cache_dir="$cache" 2> bench/data/peer-$which.log
cat bench/data/peer-$which.log >&2
ours=$(python3 - "$which" <<'PY'
import re, sys
log = open(f"bench/data/peer-{sys.argv[1]}.log").read()
tokens, seconds = re.search(r": (\d+) tokens, .* in ([\d.]+) s", log).groups()
load = float(re.search(r"load ([\d.]+) s", log).group(1))
tokenize = float(re.search(r"tokenise ([\d.]+) s", log).group(1))
print(f"{int(tokens)} {float(seconds) - load - tokenize:.1f} {load:.1f}")
PY
)
read -r tokens ours_s ours_load <<< "$ours"
peer() { python3 bench/preprocess_peer.py --cache "$cache" --model "$model" --organism "$organism" --layers "$layers" "$@" 2>/dev/null | tail -1; }
plain=$(peer)
full=$(peer --kl)
rate() { sed -n 's/.* s (\([0-9]*\) tokens\/s).*/\1/p' <<< "$1"; }
python3 - "$which" "$tokens" "$ours_s" "$ours_load" "$(rate "$plain")" "$(rate "$full")" <<'PY'
import sys
which, tokens, ours_s, ours_load, plain, full = sys.argv[1:]
ours = int(tokens) / float(ours_s)
print("| pair | tokens | diffsql preprocess (tok/s, load apart) | transformers: residual stream only | transformers: + KL, log-probs, top-k | diffsql / residual only | diffsql / same work |")
print("|---|---:|---:|---:|---:|---:|---:|")
print(f"| {which} | {tokens} | {ours:.0f} (load {ours_load} s) | {plain} | {full} | {ours / int(plain):.2f} | {ours / int(full):.2f} |")
PY
