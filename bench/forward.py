#!/usr/bin/env python3
"""Capture-forward benchmark: diffsql (candle) vs transformers (torch) on the same weights.

Both run the decoder stack alone (no unembedding, which a capture forward does not need) and return every
layer's hidden states for random tokens at each batch × context given (default 8×128 and 32×128); each figure
is the best of --repeat runs after a warm-up. On the CPU both use --threads threads (default 2). Usage:

    python3 bench/forward.py --model DIR/smollm2-135m --example PATH/TO/forward_bench
    # on a GPU, with a random model of SmolLM2-135M's shape written to DIR first:
    python3 bench/forward.py --random-smollm2 DIR --device cuda --dtype bfloat16 --example PATH/TO/forward_bench

A --model directory holding model.gguf is read from that GGUF (dequantised) by both; otherwise from its
config.json and safetensors.
"""

import argparse
import os
import shutil
import subprocess
import time

import torch
from transformers import AutoModelForCausalLM

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def write_random_smollm2(path, tokenizer="bundled/models/base/tokenizer.json", vocab=49152):
    """A randomly initialised Llama with SmolLM2-135M's shape (30 layers, d 576, GQA 9/3; vocabulary 49152
    unless given), saved with `tokenizer` beside it (its ids are all below any vocabulary given here)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    shutil.copy(tokenizer, os.path.join(path, "tokenizer.json"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model")
    p.add_argument("--random-smollm2", metavar="DIR")
    p.add_argument("--example", required=True)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shapes", default="8x128,32x128")
    args = p.parse_args()
    if args.random_smollm2:
        write_random_smollm2(args.random_smollm2)
        args.model = args.random_smollm2
    torch.set_num_threads(args.threads)
    gguf = os.path.exists(os.path.join(args.model, "model.gguf"))
    extra = {"gguf_file": "model.gguf"} if gguf else {}
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=DTYPES[args.dtype], **extra)
    model = model.to(args.device).eval()
    vocab = model.config.vocab_size
    decoder = model.model  # the decoder stack and final norm, without the LM head
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    ours_model = os.path.join(args.model, "model.gguf") if gguf else args.model
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    rows = []
    for shape in args.shapes.split(","):
        batch, context = (int(x) for x in shape.split("x"))
        ids = (torch.arange(batch * context, dtype=torch.int64) * 2654435761 % vocab).reshape(batch, context)
        ids = ids.to(args.device)
        with torch.no_grad():
            decoder(input_ids=ids, output_hidden_states=True)
            sync()
            best = float("inf")
            for _ in range(args.repeat):
                t = time.perf_counter()
                decoder(input_ids=ids, output_hidden_states=True)
                sync()
                best = min(best, time.perf_counter() - t)
        hf = batch * context / best
        out = subprocess.run([args.example, ours_model, str(batch), str(context), str(args.repeat), args.device,
                              args.dtype], check=True, capture_output=True, text=True, env=env).stdout
        ours = float(out.split()[0])
        rows.append((f"{batch}x{context}", ours, hf))
        print(f"{batch}x{context}: diffsql {ours:.0f} tok/s, transformers {hf:.0f} tok/s", flush=True)
    print(f"| batch × context ({args.device}, {args.dtype}) | diffsql (tokens/s) | transformers (tokens/s) | ratio |")
    print("|---|---:|---:|---:|")
    for name, ours, hf in rows:
        print(f"| {name} | {ours:.0f} | {hf:.0f} | {ours / hf:.2f} |")


if __name__ == "__main__":
    main()
