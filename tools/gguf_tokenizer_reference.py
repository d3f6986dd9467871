#!/usr/bin/env python3
"""What transformers' tokenizer built from a GGUF's own metadata makes of a set of texts.

For the real checkpoints tools/fetch-real-models.sh brings (SmolLM2-135M-Instruct: a byte-level BPE vocabulary
with merges; Gemma-3-270M: a sentencepiece vocabulary without merges), writes
tests/fixtures/gguf_tokenizer/<name>.json: each text and the ids of
`AutoTokenizer.from_pretrained(dir, gguf_file="model.gguf")(text).input_ids` (no tokenizer.json is read: the
directory is a copy holding only the GGUF). diffsql's tokenizer from the same metadata must give the same ids.

    pip install torch transformers "gguf>=0.10.0"
    tools/fetch-real-models.sh /tmp/real
    python3 tools/gguf_tokenizer_reference.py /tmp/real
"""

import json
import pathlib
import shutil
import sys
import tempfile

from transformers import AutoTokenizer

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gguf_tokenizer"
TEXTS = [
    "Hello world, it's  a test 123\n\nNew paragraph\tand a tab.",
    "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer",
    "    indented code():\n        return x**2 + 1_000_000  # comment",
    "Ünïcödé, 日本語のテキスト, emoji 🙂🚀, Ελληνικά and ﬁ ligatures",
    "<|im_start|>user\nWhat is Roman concrete?<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nBake a cake at 450°F?<end_of_turn>\n<start_of_turn>model\n",
    "   leading spaces, trailing spaces   ",
    "numbers 3.14159 and 2026-12-07, URLs https://example.org/a?b=c&d=e",
]


def main():
    root = pathlib.Path(sys.argv[1])
    OUT.mkdir(parents=True, exist_ok=True)
    for name in ["smollm2-135m", "gemma3-270m"]:
        with tempfile.TemporaryDirectory() as tmp:
            # Only the GGUF: transformers must build the tokenizer from its metadata.
            (pathlib.Path(tmp) / "model.gguf").symlink_to(root / name / "model.gguf")
            tok = AutoTokenizer.from_pretrained(tmp, gguf_file="model.gguf")
            rows = [{"text": t, "ids": tok(t).input_ids} for t in TEXTS]
        (OUT / f"{name}.json").write_text(json.dumps({"tokenizer": type(tok).__name__, "rows": rows}, ensure_ascii=False, indent=1) + "\n")
        print(name, [len(r["ids"]) for r in rows])


if __name__ == "__main__":
    main()
