#!/usr/bin/env python3
"""Capture-forward benchmark: diffsql (candle, f32) vs transformers (torch, f32) on the same GGUF weights.

Both run the decoder stack alone (no unembedding, which a capture forward does not need) and return every layer's
hidden states for random tokens at batch × context 8×128 and 32×128 on the CPU with
2 threads; each figure is the best of --repeat runs after a warm-up. Usage:

    python3 bench/forward.py --model DIR/smollm2-135m --example PATH/TO/forward_bench
"""

import argparse
import subprocess
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--example", required=True)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(args.model, gguf_file="model.gguf", dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    decoder = model.model  # the decoder stack and final norm, without the LM head
    rows = []
    for batch, context in ((8, 128), (32, 128)):
        ids = (torch.arange(batch * context, dtype=torch.int64) * 2654435761 % vocab).reshape(batch, context)
        with torch.no_grad():
            decoder(input_ids=ids, output_hidden_states=True)
            best = float("inf")
            for _ in range(args.repeat):
                t = time.perf_counter()
                decoder(input_ids=ids, output_hidden_states=True)
                best = min(best, time.perf_counter() - t)
        hf = batch * context / best
        out = subprocess.run([args.example, f"{args.model}/model.gguf", str(batch), str(context), str(args.repeat)],
                             check=True, capture_output=True, text=True).stdout
        ours = float(out.split()[0])
        rows.append((f"{batch}x{context}", ours, hf))
        print(f"{batch}x{context}: diffsql {ours:.0f} tok/s, transformers {hf:.0f} tok/s", flush=True)
    print("| batch × context | diffsql (tokens/s) | transformers (tokens/s) | ratio |")
    print("|---|---:|---:|---:|")
    for name, ours, hf in rows:
        print(f"| {name} | {ours:.0f} | {hf:.0f} | {ours / hf:.2f} |")


if __name__ == "__main__":
    main()
