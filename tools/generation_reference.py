#!/usr/bin/env python3
"""Reference generations for diffsql's decoding, computed with transformers' `generate`.

For every fixture model made by tools/make_fixtures.py, greedy decoding (do_sample=False) of three prompts of
different lengths batched together and left-padded (pad id 0), 12 new tokens at most, stopping a row at its EOS
(id 2) as transformers does; writes tests/fixtures/models/<family>/generation.json with the prompts' token ids and
each row's new tokens (up to and including its EOS).

    python3 tools/generation_reference.py                      # every family
    python3 tools/generation_reference.py mistral,gpt2         # some
"""

import json
import pathlib

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "models"
PROMPTS = ["To be, or not to be, that is the question:", "Now is the winter", "All the world's a stage, and all"]
MAX_NEW = 12


def main():
    import sys
    only = sys.argv[1].split(",") if len(sys.argv) > 1 else []
    for family in ["llama", "qwen2", "qwen3", "gemma2", "gemma3", "mistral", "qwen2_5_vl", "gpt2"]:
        if only and family not in only:
            continue
        d = ROOT / family
        tok = PreTrainedTokenizerFast.from_pretrained(d)
        if family == "qwen2_5_vl":
            from transformers import Qwen2_5_VLForConditionalGeneration as Loader
        else:
            Loader = AutoModelForCausalLM
        model = Loader.from_pretrained(d, attn_implementation="eager").eval()
        enc = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
        n = max(len(e) for e in enc)
        ids = torch.tensor([[0] * (n - len(e)) + e for e in enc])
        mask = torch.tensor([[0] * (n - len(e)) + [1] * len(e) for e in enc])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=MAX_NEW,
                                 eos_token_id=2, pad_token_id=0)
        rows = []
        for r in out[:, n:].tolist():
            kept = []
            for t in r:
                kept.append(t)
                if t == 2:
                    break
            rows.append(kept)
        (d / "generation.json").write_text(json.dumps({"prompts": enc, "max_new_tokens": MAX_NEW, "eos": 2, "new_tokens": rows}))
        print(family, [len(r) for r in rows], rows[0][:6])


if __name__ == "__main__":
    main()
