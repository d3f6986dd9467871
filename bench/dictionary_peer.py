#!/usr/bin/env python3
"""The reference side of bench/dictionary_peer.sh: a BatchTopK crosscoder (or an SAE on ft - base) trained in
PyTorch the way the reference toolkit's dictionary_learning trainer does (written from its published algorithm:
encoder over both sides, one decoder per side, batch-level top-k on activations scaled by decoder norms, k
annealing, auxiliary-k loss for dead latents, linear warmup, Adam), on the same cached activations and
hyperparameters as diffsql, with the same CPU threads.

To be the strongest form of the peer, it loads every training row into memory once (no streaming) and shuffles
with torch.randperm; the timed part is the training loop only. Prints one line:
    tokens seconds tokens_per_second validation_fve
"""

import argparse
import glob
import json
import os
import time

import numpy as np
import pyarrow.parquet as pq
import torch


def load(cache, model, organism, layer):
    def side(org):
        files = sorted(glob.glob(f"{cache}/activations/model={model}/organism={org}/layer={layer}/part-*.parquet"))
        manifest = json.load(open(f"{cache}/activations/model={model}/organism={org}/layer={layer}/_manifest.json"))
        tables = [pq.read_table(f, columns=["dataset", "seq_id", "act"]) for f in files]
        d = manifest["d_model"]
        raw = b"".join(b for t in tables for chunk in t.column("act").chunks for b in [chunk.buffers()[1].to_pybytes()[: len(chunk) * (2 if manifest["dtype"] != "float32" else 4) * d]])
        if manifest["dtype"] == "bfloat16":
            bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            x = bits.view(np.float32)
        elif manifest["dtype"] == "float16":
            x = np.frombuffer(raw, dtype=np.float16).astype(np.float32)
        else:
            x = np.frombuffer(raw, dtype=np.float32)
        keys = [(ds, s) for t in tables for ds, s in zip(t.column("dataset").to_pylist(), t.column("seq_id").to_pylist())]
        return x.reshape(-1, d), keys

    base, keys = side("base")
    ft, _ = side(organism)
    return base, ft, keys


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cache", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--organism", required=True)
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--kind", default="crosscoder", choices=["crosscoder", "sae_difference"])
    p.add_argument("--expansion", type=int, default=16)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--k-max", type=int, default=128)
    p.add_argument("--k-anneal-steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--dead-tokens", type=int, default=200_000)
    p.add_argument("--auxk-alpha", type=float, default=1 / 32)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    base, ft, keys = load(a.cache, a.model, a.organism, a.layer)
    d = base.shape[1]
    # The same held-out split as diffsql: 5% of sequences by a hash of (dataset, seq_id) is not reproduced
    # bit for bit here; a random 5% of sequences is held out instead.
    seqs = sorted(set(keys))
    rng = np.random.default_rng(0)
    held = set(map(tuple, np.array(seqs, dtype=object)[rng.random(len(seqs)) < 0.05]))
    mask = np.array([k in held for k in keys])
    x = np.concatenate([base, ft], axis=1) if a.kind == "crosscoder" else ft - base
    sides = 2 if a.kind == "crosscoder" else 1
    train, val = torch.from_numpy(x[~mask].copy()), torch.from_numpy(x[mask].copy())
    first = train[:65536]
    scale = torch.tensor([(d / first[:, s * d:(s + 1) * d].pow(2).sum(1).mean()).sqrt() for s in range(sides)])
    scale_row = scale.repeat_interleave(d)
    train, val = train * scale_row, val * scale_row
    w = sides * d
    m = a.expansion * d
    direction = torch.randn(m, d)
    direction /= direction.norm(dim=1, keepdim=True)
    w_dec = torch.cat([direction / sides ** 0.5] * sides, dim=1).requires_grad_(True)
    w_enc = w_dec.detach().t().clone().requires_grad_(True)
    b_enc = torch.zeros(m, requires_grad=True)
    b_dec = torch.zeros(w, requires_grad=True)
    params = [w_enc, b_enc, w_dec, b_dec]
    opt = torch.optim.Adam(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / a.warmup))
    since_fired = torch.zeros(m, dtype=torch.long)
    threshold = -1.0
    sae = a.kind == "sae_difference"
    k_aux = d // 2
    step, tokens = 0, 0
    start = time.perf_counter()
    for epoch in range(a.epochs):
        order = torch.randperm(len(train))
        for i in range(0, len(train), a.batch):
            xb = train[order[i:i + a.batch]]
            n = len(xb)
            k = round(a.k_max - (a.k_max - a.k) * min(1.0, step / a.k_anneal_steps)) if a.k_anneal_steps else a.k
            x_in = xb - b_dec if sae else xb
            f = torch.relu(x_in @ w_enc + b_enc)
            norms = sum(w_dec[:, s * d:(s + 1) * d].norm(dim=1) for s in range(sides))
            scaled = (f * norms).detach().flatten()
            values, index = scaled.topk(min(k * n, scaled.numel()))
            sel = torch.zeros_like(scaled)
            sel[index[values > 0]] = 1.0
            codes = f * sel.view_as(f)
            err = xb - (codes @ w_dec + b_dec)
            loss = err.pow(2).sum(1).mean()
            dead = since_fired >= a.dead_tokens
            if dead.any():
                kk = min(k_aux, int(dead.sum()))
                residual = err.detach()
                dead_f = torch.where(dead[None, :], f, torch.full_like(f, float("-inf")))
                av, ai = dead_f.topk(kk, dim=1)
                aux = torch.zeros_like(f).scatter(1, ai, av) @ w_dec
                loss = loss + a.auxk_alpha * (residual - aux).pow(2).sum(1).mean() / (residual - residual.mean(0)).pow(2).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            if sae:
                w_dec.grad -= (w_dec.grad * w_dec.detach()).sum(1, keepdim=True) * w_dec.detach()
            opt.step()
            sched.step()
            if sae:
                with torch.no_grad():
                    w_dec /= w_dec.norm(dim=1, keepdim=True)
            fired = (codes.detach() > 0).any(0)
            since_fired = torch.where(fired, torch.zeros_like(since_fired), since_fired + n)
            if step >= a.warmup and values[values > 0].numel():
                cut = float(values[values > 0].min())
                threshold = cut if threshold < 0 else 0.999 * threshold + 0.001 * cut
            step += 1
            tokens += n
    seconds = time.perf_counter() - start
    with torch.no_grad():
        x_in = val - b_dec if sae else val
        f = torch.relu(x_in @ w_enc + b_enc)
        norms = sum(w_dec[:, s * d:(s + 1) * d].norm(dim=1) for s in range(sides))
        codes = f * ((f * norms) > max(threshold, 0.0))
        err = (val - (codes @ w_dec + b_dec)).pow(2).sum()
        fve = 1 - float(err / (val - val.mean(0)).pow(2).sum())
    print(f"{tokens} {seconds:.2f} {tokens / seconds:.0f} {fve:.4f}")


if __name__ == "__main__":
    main()
