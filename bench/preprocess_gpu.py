#!/usr/bin/env python3
"""End-to-end `diffsql preprocess` on a GPU with a large vocabulary, where the next-token statistics (KL over
the vocabulary, top-k) matter: a randomly initialised Llama of SmolLM2-135M's shape but Gemma 3's 262,144-token
vocabulary, standing in as both base model and organism, over the bundled pretraining text. Prints the
summary line of each run (tokens/s). Usage, from the project root on the GPU machine:

    python3 bench/preprocess_gpu.py --diffsql PATH/TO/diffsql [--vocab 262144] [--samples 256]
"""

import argparse
import os
import subprocess
import tempfile
import time

from forward import write_random_smollm2  # bench/forward.py, beside this script


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--diffsql", required=True)
    p.add_argument("--vocab", type=int, default=262144)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    work = tempfile.mkdtemp()
    model = os.path.join(work, "model")
    write_random_smollm2(model, vocab=args.vocab)
    # Besides the full runs: 16 samples (what loading and start-up cost) and top_k=0 (what the top-k costs).
    for dtype, samples, top_k in [("bfloat16", args.samples, 20), ("bfloat16", 16, 20), ("bfloat16", args.samples, 0),
                                  ("float32", args.samples, 20)]:
        cmd = [args.diffsql, "preprocess", f"cache_dir={work}/cache-{dtype}-{samples}-{top_k}",
               f"model.source={model}", f"organism.finetuned.shakespeare.source={model}",
               "dataset=[shakespeare_pretrain]", f"preprocessing.max_samples={samples}",
               f"preprocessing.top_k={top_k}", f"preprocessing.device={args.device}", f"model.dtype={dtype}"]
        start = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        lines = [l for l in (run.stdout + run.stderr).splitlines() if l.startswith(("preprocess ", "Error"))]
        print(f"vocab {args.vocab}, {args.device}, {dtype}, {samples} samples, top_k {top_k}: "
              f"{lines[-1] if lines else run.stderr[-500:]} (wall {wall:.1f} s)", flush=True)
        if run.returncode != 0:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
