#!/usr/bin/env python3
"""Builds the PEFT adapters of the published organisms' forms over the tiny fixture models, with PEFT's merge.

Beside tests/fixtures/models/llama-lora (plain LoRA, tools/make_fixtures.py), two adapters in the forms the
reference toolkit's catalogue uses, each with `reference.safetensors` holding what `merge_and_unload()`'s model
computes (input ids, every layer's output, logits; see make_fixtures.record):

- `llama-lora-extras` over `llama` (untied head): rsLoRA (α/√r), a per-module rank and alpha
  (`rank_pattern`, `alpha_pattern` on gate_proj), a LoRA on the embeddings (`lora_embedding_A/B`), and
  `modules_to_save=["lm_head"]` (the head trained in full and saved whole).
- `qwen2-lora-tied` over `qwen2` (embeddings tied to the head): `modules_to_save=["lm_head"]`, which PEFT's
  merge unties (the head is the trained copy, the embeddings stay the base's).

- `gpt2-lora` over `gpt2`: LoRA on GPT-2's Conv1D projections (`fan_in_fan_out`, weights stored in × out),
  the form of the toolkit's `test_alpaca_lora` organism.

`base_model_name_or_path` is set to the hub id the integration test gives the base model in its local hub
cache (`diffsql-fixtures/tiny-llama`, `diffsql-fixtures/tiny-qwen2`).

    pip install torch transformers safetensors peft
    python3 tools/make_peft_fixtures.py
"""

import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import OUT, record  # noqa: E402


def randomise(peft_model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif "modules_to_save" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def build(base, out, cfg, seed, hub_id):
    from peft import get_peft_model
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(OUT / base, attn_implementation="eager").eval()
    tok = Tokenizer.from_file(str(OUT / base / "tokenizer.json"))
    peft_model = get_peft_model(model, cfg)
    randomise(peft_model, seed)
    d = OUT / out
    if d.exists():
        shutil.rmtree(d)
    peft_model.save_pretrained(d)
    config_path = d / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = hub_id
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    merged = peft_model.merge_and_unload().eval()
    record(merged, tok, d / "reference.safetensors")
    (d / "README.md").write_text(
        f"PEFT adapter for ../{base} (tools/make_peft_fixtures.py); reference.safetensors holds the outputs of "
        "PEFT's merge_and_unload() model.\n"
    )
    print(out, "written")


def main():
    from peft import LoraConfig

    torch.manual_seed(0)
    build(
        "llama",
        "llama-lora-extras",
        LoraConfig(
            r=4,
            lora_alpha=8,
            use_rslora=True,
            target_modules=["q_proj", "v_proj", "gate_proj", "embed_tokens"],
            rank_pattern={"gate_proj": 2},
            alpha_pattern={"gate_proj": 3},
            modules_to_save=["lm_head"],
            lora_dropout=0.0,
        ),
        seed=11,
        hub_id="diffsql-fixtures/tiny-llama",
    )
    build(
        "qwen2",
        "qwen2-lora-tied",
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"], modules_to_save=["lm_head"],
                   lora_dropout=0.0),
        seed=12,
        hub_id="diffsql-fixtures/tiny-qwen2",
    )
    build(
        "gpt2",
        "gpt2-lora",
        LoraConfig(r=4, lora_alpha=16, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True, lora_dropout=0.0),
        seed=13,
        hub_id="diffsql-fixtures/tiny-gpt2",
    )


if __name__ == "__main__":
    main()
