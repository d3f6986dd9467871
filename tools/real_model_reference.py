#!/usr/bin/env python3
"""Records transformers' outputs for the real checkpoints fetched by tools/fetch-real-models.sh.

For each model directory under DIR (model.gguf [+ tokenizer.json]): writes tokenizer.json if missing
(converted by transformers from the GGUF vocabulary), then runs transformers on the *same dequantised GGUF
weights* in float32 over a right-padded batch of prompts, and saves reference.safetensors (input_ids,
attention_mask, layer.{i} = output of decoder layer i via forward hooks, logits) and reference.json (greedy
continuation of the first prompt, and plain texts tokenised by transformers' own GGUF tokenizer). Needs: pip install torch transformers gguf accelerate.

    python3 tools/real_model_reference.py DIR
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

PROMPTS = ["The capital of France is", "Once upon a time, there was a little", "def fibonacci(n):"]


def main(root):
    for d in sorted(Path(root).iterdir()):
        if not (d / "model.gguf").exists():
            continue
        if not (d / "tokenizer.json").exists():
            AutoTokenizer.from_pretrained(d, gguf_file="model.gguf").save_pretrained(d)
        tok = PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"))
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file="model.gguf", dtype=torch.float32).eval()
        enc = [tok(p)["input_ids"] for p in PROMPTS]
        n = max(len(e) for e in enc)
        ids = torch.tensor([e + [0] * (n - len(e)) for e in enc])
        mask = torch.tensor([[1] * len(e) + [0] * (n - len(e)) for e in enc])
        captured = {}
        hooks = [layer.register_forward_hook(
            lambda m, i, o, k=k: captured.__setitem__(f"layer.{k}", (o[0] if isinstance(o, tuple) else o).detach().clone()))
            for k, layer in enumerate(model.model.layers)]
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask)
        for h in hooks:
            h.remove()
        tensors = {"input_ids": ids, "attention_mask": mask, "logits": out.logits.float().contiguous()}
        tensors.update({k: v.float().contiguous() for k, v in captured.items()})
        save_file(tensors, str(d / "reference.safetensors"))
        first = torch.tensor([enc[0]])
        with torch.no_grad():
            gen = model.generate(first, attention_mask=torch.ones_like(first), max_new_tokens=16, do_sample=False)
        text = tok.decode(gen[0][len(enc[0]):])
        # How transformers tokenises plain text when it reads the tokenizer from the GGUF itself (BOS included
        # when the GGUF's tokenizer.ggml.add_bos_token says so): what diffsql's preprocessing must reproduce.
        gguf_tok = AutoTokenizer.from_pretrained(d, gguf_file="model.gguf")
        texts = ["The capital of France is Paris.", "Once upon a time"]
        gguf_ids = [{"text": t, "ids": gguf_tok(t)["input_ids"]} for t in texts]
        (d / "reference.json").write_text(json.dumps(
            {"prompt": PROMPTS[0], "greedy": gen[0].tolist(), "text": text, "gguf_tokenization": gguf_ids}))
        print(d.name, model.config.model_type, len(model.model.layers), "layers; greedy:", repr(text))


if __name__ == "__main__":
    main(sys.argv[1])
