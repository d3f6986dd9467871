#!/usr/bin/env python3
"""Writes the reference toolkit's catalogue of base models and organisms as diffsql configs.

Reads science-of-finetuning/diffing-toolkit's `configs/model/*.yaml` and `configs/organism/*.yaml` (a checkout or
an unpacked snapshot) and writes `configs/model/NAME.toml` and `configs/organism/NAME.toml`. The model ids and
descriptions are the toolkit's; the TOML layout is diffsql's (docs/CATALOGUE.md):

- a base model keeps its hub id (`source`), compute dtype, end-of-turn token, the number of leading tokens per
  sample its statistics skip (`ignore_first_tokens`, the toolkit's `..._during_training`) and whether its chat
  template takes `enable_thinking`. The toolkit's torch-only keys (attn_implementation, disable_compile) are left
  out: diffsql has one attention implementation and no compiler.
- an organism keeps its type, both descriptions, the training data the toolkit names (`[training_data]`),
  metadata and an agent system prompt where given, and every checkpoint per base model as a named variant:
  `[finetuned.BASE.VARIANT]` with `adapter` (a PEFT LoRA: `org/repo` or `org/repo/subfolder`) or `source` (a
  full model). An `adapter_id` that is itself a base model's hub id (the `chat` organism: the instruct model
  as a finetune of the pretrained one) is a full model, written as `source`.

What diffsql had before is kept: files the toolkit does not have are not touched; in a file it has, the checkpoints
of bases the toolkit does not know (the bundled `shakespeare` model), the hand-written short description,
`training_dataset` and a model's own dtype and description are kept.

    python3 tools/import_catalogue.py /path/to/diffing-toolkit [--configs configs]
"""

import argparse
import re
import sys
import tomllib
from pathlib import Path

import yaml

# Toolkit model keys written to diffsql, with their diffsql names.
MODEL_KEYS = {
    "end_of_turn_token": "end_of_turn_token",
    "ignore_first_n_tokens_per_sample_during_training": "ignore_first_tokens",
    "has_enable_thinking": "has_enable_thinking",
}
# A base model an organism names that has no model config in the toolkit.
EXTRA_MODELS = {
    "mistral_large_instruct_2411": {
        "model_id": "mistralai/Mistral-Large-Instruct-2411",
        "dtype": "bfloat16",
        "end_of_turn_token": "</s>",
        "ignore_first_n_tokens_per_sample_during_training": 0,
        "has_enable_thinking": False,
        "description": "Mistral Large Instruct 2411 (123B): the base of the sandbagging organism `maple`, which "
        "the toolkit names without a model config of its own",
    }
}


def toml_string(s: str) -> str:
    """A TOML string: literal multi-line when it spans lines and can be, else an escaped basic string."""
    if "\n" in s and "'''" not in s and not s.endswith("'"):
        return "'''\n" + s + "'''"
    out = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    out = "".join(c if ord(c) >= 0x20 or c in "\\" else f"\\u{ord(c):04x}" for c in out)
    return f'"{out}"'


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")


def bare_or_quoted(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_string(key)


def table(lines, header, items):
    lines.append("")
    lines.append(f"[{header}]")
    for k, v in items.items():
        if v is not None:
            lines.append(f"{bare_or_quoted(k)} = {toml_value(v)}")


def read_existing(path: Path) -> dict:
    return tomllib.loads(path.read_text()) if path.exists() else {}


def describe_model(model_id: str) -> str:
    return model_id.split("/")[-1].replace("-", " ")


def write_model(out: Path, name: str, cfg: dict, source_note: str):
    old = read_existing(out)
    lines = [f"# {source_note}"]
    lines.append(f"description = {toml_string(old.get('description') or cfg.get('description') or describe_model(cfg['model_id']))}")
    lines.append(f"source = {toml_string(old.get('source', cfg['model_id']))}")
    if "revision" in old:
        lines.append(f"revision = {toml_string(old['revision'])}")
    lines.append(f"dtype = {toml_string(old.get('dtype', cfg['dtype']))}")
    for key, ours in MODEL_KEYS.items():
        v = cfg.get(key)
        if v is not None:
            lines.append(f"{ours} = {toml_value(v)}")
    out.write_text("\n".join(lines) + "\n")


def checkpoint(entry: dict, base_ids: set) -> dict:
    if "adapter_id" in entry and entry["adapter_id"] not in base_ids:
        return {"adapter": entry["adapter_id"]}
    if "adapter_id" in entry:
        return {"source": entry["adapter_id"]}
    return {"source": entry["model_id"]}


def write_organism(out: Path, name: str, cfg: dict, base_ids: set, source_note: str):
    old = read_existing(out)
    lines = [f"# {source_note}"]
    lines.append(f"description = {toml_string(old.get('description') or cfg['description'])}")
    lines.append(f"type = {toml_string(cfg['type'])}")
    if old.get("training_dataset"):
        lines.append(f"training_dataset = {toml_string(old['training_dataset'])}")
    lines.append(f"description_long = {toml_string(cfg['description_long'].rstrip() + chr(10))}")
    if cfg.get("agent_interaction_system_prompt"):
        lines.append(
            f"agent_interaction_system_prompt = {toml_string(cfg['agent_interaction_system_prompt'].rstrip() + chr(10))}"
        )
    dataset = cfg.get("dataset")
    if dataset:
        table(lines, "training_data", {k: dataset.get(k) for k in ("id", "subset", "splits", "is_chat", "text_column")})
    if cfg.get("metadata"):
        table(lines, "metadata", {k: str(v) for k, v in cfg["metadata"].items()})
    toolkit_bases = set(cfg["finetuned_models"])
    for base, one in (old.get("finetuned") or {}).items():
        if base not in toolkit_bases:
            table(lines, f"finetuned.{bare_or_quoted(base)}", one)
    for base, variants in cfg["finetuned_models"].items():
        for variant, entry in variants.items():
            table(lines, f"finetuned.{bare_or_quoted(base)}.{bare_or_quoted(variant)}", checkpoint(entry, base_ids))
    out.write_text("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("toolkit", type=Path, help="a diffing-toolkit checkout (its configs/ is read)")
    ap.add_argument("--configs", type=Path, default=Path(__file__).resolve().parent.parent / "configs")
    ap.add_argument("--commit", default="", help="the toolkit commit, recorded in each file's header")
    args = ap.parse_args()
    src = args.toolkit / "configs"
    note = "From science-of-finetuning/diffing-toolkit configs/{}/{}.yaml{}; rewritten by tools/import_catalogue.py"
    at = f" at {args.commit}" if args.commit else ""
    models = {}
    for path in sorted((src / "model").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        if cfg["name"] == "auto":  # a sentinel, not a model
            continue
        models[cfg["name"]] = cfg
        write_model(args.configs / "model" / f"{cfg['name']}.toml", cfg["name"], cfg, note.format("model", path.stem, at))
    for name, cfg in EXTRA_MODELS.items():
        write_model(args.configs / "model" / f"{name}.toml", name, cfg,
                    f"Not a toolkit config: the base that organism ukaisi_sandbagging_maple names; tools/import_catalogue.py")
    base_ids = {m["model_id"] for m in models.values()}
    count = 0
    for path in sorted((src / "organism").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        if not isinstance(cfg.get("finetuned_models"), dict):  # `None`: every base model as its own organism
            print(f"skipped organism {cfg['name']}: its checkpoints are computed ({cfg.get('finetuned_models')})",
                  file=sys.stderr)
            continue
        write_organism(args.configs / "organism" / f"{cfg['name']}.toml", cfg["name"], cfg, base_ids,
                       note.format("organism", path.stem, at))
        count += 1
    rubrics = yaml.safe_load((src / "diffing" / "grading_rubrics.yaml").read_text())["grading_rubrics"]
    lines = [
        "# The graders' rubrics by organism type (what each score from 1 to 5 requires), from",
        f"# science-of-finetuning/diffing-toolkit configs/diffing/grading_rubrics.yaml{at}; rewritten by",
        "# tools/import_catalogue.py. An organism type not named here is graded with diffsql's default rubric.",
        "",
        "[rubrics]",
    ]
    for kind, text in rubrics.items():
        lines.append(f"{bare_or_quoted(kind)} = {toml_string(text.rstrip() + chr(10))}")
    (args.configs / "diffing" / "grading_rubrics.toml").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(models) + len(EXTRA_MODELS)} model and {count} organism configs and {len(rubrics)} rubrics under {args.configs}")


if __name__ == "__main__":
    main()
