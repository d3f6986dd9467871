#!/usr/bin/env python3
"""Greedy generation with transformers' `generate` (KV cache, left padding), timed like `diffsql generate`:
the same model file, prompts, new tokens and CPU threads. Prints one line: prompts, new tokens, seconds, tokens/s.

    python3 bench/generate_peer.py --model DIR --batch 8 --new-tokens 64 [--threads 2]

DIR holds model.gguf (or safetensors) and the tokenizer. One warm-up call (2 tokens) runs first and is not timed.
"""

import argparse
import os
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "The history of the Roman Empire",
    "Once upon a time, in a small village,",
    "The best way to learn a new language is",
    "Photosynthesis is the process by which",
    "In computer science, a hash table",
    "The weather forecast for tomorrow says",
    "My favourite recipe for bread uses",
    "The theory of general relativity explains",
]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    gguf = os.path.exists(os.path.join(args.model, "model.gguf"))
    extra = {"gguf_file": "model.gguf"} if gguf else {}
    # The tokenizer from tokenizer.json and tokenizer_config.json beside the weights, as diffsql reads it (a GGUF's
    # embedded tokenizer loads without its special tokens).
    tok = AutoTokenizer.from_pretrained(args.model)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, **extra).eval()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch)]
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        model.generate(**enc, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)
        start = time.perf_counter()
        out = model.generate(**enc, max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        seconds = time.perf_counter() - start
    new = out[:, enc["input_ids"].shape[1]:]
    eos = tok.eos_token_id
    tokens = 0
    for row in new.tolist():
        for t in row:
            tokens += 1
            if t == eos:
                break
    print(f"{len(prompts)} prompts, {tokens} new tokens in {seconds:.2f} s ({tokens / seconds:.1f} tokens/s)")


if __name__ == "__main__":
    main()
