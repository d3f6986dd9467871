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

- `llama-added-tokens`: a full finetune of `llama` whose tokenizer adds 8 tokens (`<|quirk_0|>` …) and whose
  embeddings and head are resized to 1008 rows, every weight perturbed. `reference.safetensors` holds, for
  `prompts.json` tokenised by the *base* tokenizer (as preprocessing does), KL(ft‖base) per position over the
  1000 shared tokens, computed in float64 from transformers' logits (the organism's sliced to the base's
  vocabulary, then both log-softmaxed: the reference toolkit's `drop_new_tokens`).

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


def added_tokens():
    import numpy as np
    from safetensors.torch import save_file
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    base_dir, d = OUT / "llama", OUT / "llama-added-tokens"
    if d.exists():
        shutil.rmtree(d)
    base = AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager").eval()
    ft = AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager").eval()
    tok = PreTrainedTokenizerFast.from_pretrained(base_dir)
    tok.add_tokens([f"<|quirk_{i}|>" for i in range(8)])
    ft.resize_token_embeddings(len(tok), mean_resizing=False)
    g = torch.Generator().manual_seed(21)
    with torch.no_grad():
        for _, p in ft.named_parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    ft.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    prompts = ["To be, or not to be, that is the question:", "Now is the winter of our <|quirk_3|> discontent",
               "All the world's a stage, <|quirk_3|> and <|quirk_5|>"]
    base_tok = Tokenizer.from_file(str(base_dir / "tokenizer.json"))
    enc = [base_tok.encode(p).ids for p in prompts]
    n = max(len(e) for e in enc)
    ids = torch.tensor([e + [0] * (n - len(e)) for e in enc])
    mask = torch.tensor([[1] * len(e) + [0] * (n - len(e)) for e in enc])
    with torch.no_grad():
        lb = base(input_ids=ids, attention_mask=mask).logits.double().numpy()
        lf = ft(input_ids=ids, attention_mask=mask).logits.double().numpy()[..., : lb.shape[-1]]

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lpb, lpf = log_softmax(lb), log_softmax(lf)
    kl = (np.exp(lpf) * (lpf - lpb)).sum(-1)
    save_file({"input_ids": ids.to(torch.int64), "attention_mask": mask.to(torch.int64),
               "kl": torch.from_numpy(kl).float().contiguous()}, str(d / "reference.safetensors"))
    (d / "prompts.json").write_text(json.dumps(prompts))
    (d / "README.md").write_text("A full finetune of ../llama with 8 added tokens (tools/make_peft_fixtures.py); "
                                 "reference.safetensors holds KL(ft||base) over the shared vocabulary.\n")
    print("llama-added-tokens written", ft.config.vocab_size, "tokens")


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
    added_tokens()


if __name__ == "__main__":
    main()
