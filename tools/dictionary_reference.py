#!/usr/bin/env python3
"""Reference values for diffsql's dictionary trainers, computed with PyTorch.

For a crosscoder (BatchTopK and L1) and an SAE on differences (BatchTopK), on fixed random weights and inputs,
records the forward pass (activations, sparse codes, reconstruction), the loss terms (squared error,
auxiliary-k loss for dead latents, L1 penalty) and the parameters after one Adam step, as
tests/fixtures/dictionary/reference.json. The algorithm is written from the published descriptions
(BatchTopK: Bussmann et al. 2024; crosscoder: Minder, Dumas et al. 2025, arXiv 2504.02922) in plain torch
idioms (topk, scatter, torch.optim.Adam), independently of the Rust code it checks.

    python3 tools/dictionary_reference.py
"""

import json
import os

import torch

torch.manual_seed(0)
torch.set_default_dtype(torch.float32)


def case(name, sides, sae, sparsity, d=6, m=16, batch=24, k=3, k_aux=4, alpha=1 / 32, l1=0.05, lr=1e-2):
    w = sides * d
    w_dec = torch.randn(m, w)
    if sae:
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    params = {
        "w_enc": torch.randn(w, m) * 0.5,
        "b_enc": torch.randn(m) * 0.1,
        "w_dec": w_dec,
        "b_dec": torch.randn(w) * 0.1,
    }
    x = torch.randn(batch, w) + 0.3
    dead = torch.rand(m) < 0.4
    p = {key: v.clone().requires_grad_(True) for key, v in params.items()}

    x_in = x - p["b_dec"] if sae else x
    f = torch.relu(x_in @ p["w_enc"] + p["b_enc"])
    norms = sum(p["w_dec"][:, s * d:(s + 1) * d].norm(dim=1) for s in range(sides))
    penalty = torch.tensor(0.0)
    if sparsity == "batch_topk":
        scaled = (f * norms).detach().flatten()
        values, index = scaled.topk(k * batch)
        mask = torch.zeros_like(scaled)
        mask[index[values > 0]] = 1.0
        codes = f * mask.view_as(f)
    else:
        codes = f
        penalty = (f * norms).sum(dim=1).mean()
    x_hat = codes @ p["w_dec"] + p["b_dec"]
    err = x - x_hat
    l2 = err.pow(2).sum(dim=1).mean()
    loss = l2 + l1 * penalty if sparsity == "l1" else l2
    auxk = torch.tensor(0.0)
    if sparsity == "batch_topk" and dead.any():
        kk = min(k_aux, int(dead.sum()))
        residual = err.detach()
        dead_f = torch.where(dead[None, :], f, torch.full_like(f, float("-inf")))
        aux_values, aux_index = dead_f.topk(kk, dim=1)
        aux_codes = torch.zeros_like(f).scatter(1, aux_index, aux_values)
        predicted = aux_codes @ p["w_dec"]
        auxk = (residual - predicted).pow(2).sum(dim=1).mean() / (residual - residual.mean(dim=0)).pow(2).sum(dim=1).mean()
        loss = loss + alpha * auxk

    optimiser = torch.optim.Adam(list(p.values()), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    optimiser.zero_grad()
    loss.backward()
    if sae:
        g, wd = p["w_dec"].grad, p["w_dec"].detach()
        p["w_dec"].grad = g - (g * wd).sum(dim=1, keepdim=True) * wd
    optimiser.step()
    if sae:
        with torch.no_grad():
            p["w_dec"] /= p["w_dec"].norm(dim=1, keepdim=True)

    flat = lambda t: t.detach().flatten().tolist()
    return {
        "name": name,
        "sides": sides,
        "d_model": d,
        "latents": m,
        "sae": sae,
        "sparsity": sparsity,
        "k": k,
        "k_aux": k_aux,
        "auxk_alpha": alpha,
        "l1": l1,
        "lr": lr,
        "x": flat(x),
        "dead": dead.tolist(),
        "params": {key: flat(v) for key, v in params.items()},
        "activations": flat(f),
        "codes": flat(codes),
        "x_hat": flat(x_hat),
        "l2": float(l2),
        "auxk": float(auxk),
        "penalty": float(penalty),
        "loss": float(loss),
        "after_step": {key: flat(v) for key, v in p.items()},
    }


def main():
    cases = [
        case("crosscoder_batch_topk", sides=2, sae=False, sparsity="batch_topk"),
        case("crosscoder_l1", sides=2, sae=False, sparsity="l1"),
        case("sae_batch_topk", sides=1, sae=True, sparsity="batch_topk"),
    ]
    out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "dictionary", "reference.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"torch": torch.__version__, "cases": cases}, f)
    print(f"wrote {os.path.normpath(out)} ({len(cases)} cases, torch {torch.__version__})")


if __name__ == "__main__":
    main()
