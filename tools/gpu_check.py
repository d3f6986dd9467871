#!/usr/bin/env python3
"""GPU check of `preprocessing.device=cuda`: the same preprocessing on the GPU and on the CPU must agree.

Runs a diffsql built with `--features cuda` (path given) from the project root:
  1. the bundled pair (caps organism, llama family) in float32 on cuda and on cpu, and in bfloat16 on cuda;
  2. each fixture family under tests/fixtures/models (llama, qwen2, qwen3, gemma2, gemma3) as its own organism,
     float32, on cuda and on cpu (the CPU side matches transformers within 1e-4: the fixture tests in CI);
  3. the error for a device that does not exist (cuda:7).
Then compares every cached activation partition and the tokens table (log-probs, KL) between the runs and
prints a table; exits non-zero if float32 disagrees by more than 1e-4 (max abs, activations) or the
bfloat16 run by more than the bound stated below. Usage:

    python3 tools/gpu_check.py --diffsql PATH/TO/diffsql [--out DIR] [--samples N]
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq

FAMILIES = ["llama", "qwen2", "qwen3", "gemma2", "gemma3"]


def cuda_library_path():
    """Directories of the CUDA runtime and cuBLAS libraries (libcudart, libcublas, libcublasLt) from the Python environment's nvidia wheels."""
    import site

    dirs = set()
    for root in site.getsitepackages() + [site.getusersitepackages()]:
        for lib in glob.glob(os.path.join(root, "nvidia", "**", "libcu*.so*"), recursive=True):
            dirs.add(os.path.dirname(lib))
    return sorted(dirs)


def preprocess(binary, cache, overrides, env):
    cmd = [binary, "preprocess", f"cache_dir={cache}"] + overrides
    start = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"FAILED: {' '.join(cmd)}\n{run.stdout}\n{run.stderr}")
    line = [l for l in run.stdout.splitlines() + run.stderr.splitlines() if l.startswith("preprocess ")]
    return seconds, (line[-1] if line else run.stdout.strip().splitlines()[-1])


def vectors(path):
    t = pq.read_table(path)
    meta = t.schema.field("act").metadata
    dtype = meta[b"diffsql.dtype"].decode()
    d = int(meta[b"diffsql.d_model"])
    raw = np.frombuffer(t.column("act").combine_chunks().buffers()[1], dtype=np.uint8)
    if dtype == "float32":
        x = raw.view(np.float32)
    elif dtype == "bfloat16":
        x = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        x = raw.view(np.float16).astype(np.float32)
    keys = np.stack([t.column("seq_id").to_numpy(), t.column("pos").to_numpy()], axis=1)
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    return x.reshape(-1, d)[order]


def compare(a, b):
    """Max abs and max relative (per-vector L2) difference of every activation partition; tokens too."""
    out = {"act_max_abs": 0.0, "act_max_rel": 0.0, "act_scale": 0.0, "partitions": 0}
    for pa in sorted(glob.glob(f"{a}/activations/**/*.parquet", recursive=True)):
        pb = pa.replace(a, b, 1)
        xa, xb = vectors(pa), vectors(pb)
        assert xa.shape == xb.shape, (pa, xa.shape, xb.shape)
        diff = np.abs(xa - xb)
        rel = np.linalg.norm(xa - xb, axis=1) / np.maximum(np.linalg.norm(xb, axis=1), 1e-12)
        out["act_max_abs"] = max(out["act_max_abs"], float(diff.max()))
        out["act_max_rel"] = max(out["act_max_rel"], float(rel.max()))
        out["act_scale"] = max(out["act_scale"], float(np.abs(xb).max()))
        out["partitions"] += 1
    # Tokens: log-prob and KL; top-k ids in the same order (near-ties may swap neighbours) and their log-probs.
    worst = {"logprob": 0.0, "kl": 0.0, "topk": 0.0}
    same, rows = 0, 0
    for pa in sorted(glob.glob(f"{a}/tokens/**/*.parquet", recursive=True)):
        ta, tb = pq.read_table(pa), pq.read_table(pa.replace(a, b, 1))
        for col in ["logprob", "kl"]:
            va = ta.column(col).to_numpy(zero_copy_only=False)
            vb = tb.column(col).to_numpy(zero_copy_only=False)
            ok = ~(np.isnan(va) | np.isnan(vb))
            if ok.any():
                worst[col] = max(worst[col], float(np.abs(va[ok] - vb[ok]).max()))
        for ia, ib, la, lb in zip(ta.column("topk_ids").to_pylist(), tb.column("topk_ids").to_pylist(),
                                  ta.column("topk_logprobs").to_pylist(), tb.column("topk_logprobs").to_pylist()):
            rows += 1
            same += ia == ib
            worst["topk"] = max([worst["topk"]] + [abs(x - y) for x, y in zip(sorted(la), sorted(lb))])
    out["logprob_max_abs"], out["kl_max_abs"] = worst["logprob"], worst["kl"]
    out["topk_same_share"] = same / max(rows, 1)
    out["topk_logprob_max_abs"] = worst["topk"]
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--diffsql", required=True)
    p.add_argument("--out", default="gpu-check")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--device", default="cuda", help="the device under test (cpu: a dry run of the script)")
    args = p.parse_args()
    binary = os.path.abspath(args.diffsql)
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(cuda_library_path() + [env.get("LD_LIBRARY_PATH", "")])
    os.makedirs(args.out, exist_ok=True)
    linked = subprocess.run(["ldd", binary], capture_output=True, text=True, env=env).stdout
    print("".join(l for l in linked.splitlines(True) if re.search(r"cuda|cublas|curand|nvrtc|not found", l)))
    if "not found" in linked:
        raise SystemExit("the CUDA libraries above are missing: put their directories on LD_LIBRARY_PATH")
    results, failures = [], []
    common = [f"preprocessing.max_samples={args.samples}", "preprocessing.dtype=float32"]

    bundled = common + ["organism=caps"]
    # The first CUDA run of a machine compiles candle's PTX kernels for the GPU (cached after): keep that out
    # of the timed runs.
    preprocess(binary, f"{args.out}/warm-up", ["preprocessing.max_samples=2", f"preprocessing.device={args.device}"],
               env)
    runs = {}
    for name, extra in [
        ("cuda-f32", [f"preprocessing.device={args.device}", "model.dtype=float32"]),
        ("cpu-f32", ["preprocessing.device=cpu", "model.dtype=float32"]),
        ("cuda-bf16", [f"preprocessing.device={args.device}", "model.dtype=bfloat16"]),
    ]:
        runs[name] = preprocess(binary, f"{args.out}/bundled-{name}", bundled + extra, env)
        print(f"bundled {name}: {runs[name][1]} (wall {runs[name][0]:.1f} s)", flush=True)
    for name, ref, bound in [("cuda-f32", "cpu-f32", 1e-4), ("cuda-bf16", "cpu-f32", None)]:
        c = compare(f"{args.out}/bundled-{name}", f"{args.out}/bundled-{ref}")
        c.update(check=f"bundled {name} vs {ref}", summary=runs[name][1])
        results.append(c)
        # bfloat16 weights and arithmetic: ~3 significant digits; 5% of the per-vector norm is the bound.
        if (bound is not None and (c["act_max_abs"] > bound or c["topk_logprob_max_abs"] > bound)) or (
                bound is None and c["act_max_rel"] > 0.05):
            failures.append(c["check"])

    for fam in FAMILIES:
        src = f"tests/fixtures/models/{fam}"
        over = common + [
            f"model.source={src}",
            f"organism.finetuned.shakespeare.source={src}",
            "dataset=[shakespeare_pretrain]",
            "preprocessing.layers=[0,1]",
            "model.dtype=float32",
        ]
        for name, dev in [("cuda", args.device), ("cpu", "cpu")]:
            preprocess(binary, f"{args.out}/{fam}-{name}", over + [f"preprocessing.device={dev}"], env)
        c = compare(f"{args.out}/{fam}-cuda", f"{args.out}/{fam}-cpu")
        c.update(check=f"{fam} fixture cuda vs cpu (f32)")
        results.append(c)
        if c["act_max_abs"] > 1e-4 or c["topk_logprob_max_abs"] > 1e-4:
            failures.append(c["check"])

    bad = subprocess.run([binary, "preprocess", "preprocessing.device=cuda:7", f"cache_dir={args.out}/bad"],
                         capture_output=True, text=True, env=env)
    bad_lines = bad.stderr.strip().splitlines()
    bad_line = bad_lines[-1] if bad_lines else ""
    print(f"cuda:7 -> exit {bad.returncode}, {len(bad_lines)} line(s) on stderr: {bad_line}")
    if bad.returncode == 0 or "panicked" in bad.stderr or len(bad_lines) != 1:
        failures.append("cuda:7 error")

    print("| check | partitions | act max abs | act max rel (L2) | act max |x| | logprob max abs | kl max abs "
          "| top-k same order | top-k log-prob max abs |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in results:
        print(f"| {c['check']} | {c['partitions']} | {c['act_max_abs']:.2e} | {c['act_max_rel']:.2e} | "
              f"{c['act_scale']:.1f} | {c['logprob_max_abs']:.2e} | {c['kl_max_abs']:.2e} | "
              f"{c['topk_same_share']:.4f} | {c['topk_logprob_max_abs']:.2e} |")
    with open(f"{args.out}/gpu-check.json", "w") as f:
        json.dump({"results": results, "runs": runs, "bad_device": [bad.returncode, bad_line],
                   "failures": failures}, f, indent=1)
    if failures:
        print("FAILED:", ", ".join(failures))
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
