#!/usr/bin/env python3
"""The reference toolkit's preprocessing, done the plain way in transformers, on the tokens diffsql cached.

What the diffing-toolkit's preprocessing does per model (there with nnsight; here with transformers'
`output_hidden_states`, which returns the same residual stream): run the model over batches of sequences,
take the residual stream after the chosen decoder layers, drop the padding, and store it in bfloat16. For a
fair end-to-end figure against `diffsql preprocess`, which also computes the exact per-token KL(ft || base)
over the full vocabulary and both models' top-k and next-token log-prob, `--kl` adds that (the toolkit does it
later, in its kl method).

The token ids come from a diffsql cache (`tokens` table, base rows), so both sides run the same sequences in
the same batches (right-padded, --batch sequences each). Timed from the first batch to the last result in host
memory; loading is reported apart. Usage:

    python3 bench/preprocess_peer.py --cache CACHE --model DIR_OR_GGUF_DIR --organism DIR_OR_GGUF_DIR \
        --layers 7,14,22,29 [--batch 32] [--threads 2] [--kl] [--top-k 20]
"""

import argparse
import os
import time

import numpy as np
import pyarrow.dataset as ds
import torch
from transformers import AutoModelForCausalLM


def load(path):
    gguf = os.path.exists(os.path.join(path, "model.gguf"))
    extra = {"gguf_file": "model.gguf"} if gguf else {}
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **extra).eval()


def sequences(cache):
    t = ds.dataset(f"{cache}/tokens", format="parquet", partitioning="hive").to_table(
        filter=ds.field("organism") == "base", columns=["dataset", "seq_id", "pos", "token_id"])
    dataset = np.asarray(t.column("dataset").to_pylist())
    seq, pos = t.column("seq_id").to_numpy(), t.column("pos").to_numpy()
    tok = t.column("token_id").to_numpy()
    # diffsql's order: datasets in config order, which is the order the cache holds them in.
    names = list(dict.fromkeys(dataset.tolist()))
    rank = np.array([names.index(d) for d in dataset])
    order = np.lexsort((pos, seq, rank))
    key = np.stack([rank[order], seq[order]], axis=1)
    starts = np.flatnonzero(np.any(np.diff(key, axis=0) != 0, axis=1)) + 1
    return np.split(tok[order], starts)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cache", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--organism", required=True)
    p.add_argument("--layers", required=True, help="decoder layer indices, comma separated")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kl", action="store_true", help="also per-token KL(ft||base), log-probs and top-k")
    p.add_argument("--top-k", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    layers = [int(x) for x in args.layers.split(",")]
    seqs = sequences(args.cache)
    tokens = sum(len(s) for s in seqs)

    t0 = time.perf_counter()
    base, ft = load(args.model), load(args.organism)
    loaded = time.perf_counter() - t0

    stored = {"base": [], "ft": []}
    kls, logprobs, tops = [], [], []
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(seqs), args.batch):
            chunk = seqs[i:i + args.batch]
            width = max(len(s) for s in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, s in enumerate(chunk):
                ids[r, :len(s)] = torch.from_numpy(s.astype(np.int64))
                mask[r, :len(s)] = 1
            keep = mask.bool()
            logits = {}
            for name, model in (("base", base), ("ft", ft)):
                if args.kl:
                    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                    logits[name] = out.logits[keep]
                else:
                    # The decoder stack alone: the residual stream is all the toolkit's preprocessing keeps.
                    out = model.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                hidden = out.hidden_states
                # hidden_states[l + 1] is the output of decoder layer l (the last one after the final norm in
                # transformers; the toolkit's hooks take the layer output itself, as diffsql does).
                stored[name].append([hidden[l + 1][keep].to(torch.bfloat16) for l in layers])
            if args.kl:
                lp_b = torch.log_softmax(logits["base"].float(), dim=-1)
                lp_f = torch.log_softmax(logits["ft"].float(), dim=-1)
                kls.append((lp_f.exp() * (lp_f - lp_b)).sum(-1))
                nxt = torch.cat([torch.from_numpy(np.append(s[1:], 0).astype(np.int64)) for s in chunk])
                logprobs.append((lp_b.gather(1, nxt[:, None]), lp_f.gather(1, nxt[:, None])))
                tops.append((lp_b.topk(args.top_k, dim=-1), lp_f.topk(args.top_k, dim=-1)))
    seconds = time.perf_counter() - start
    what = "residual stream + KL, log-probs, top-k" if args.kl else "residual stream only"
    print(f"transformers ({what}): {tokens} tokens, {seconds:.1f} s ({tokens / seconds:.0f} tokens/s), "
          f"loading {loaded:.1f} s, {args.threads} threads")


if __name__ == "__main__":
    main()
