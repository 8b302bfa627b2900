#!/usr/bin/env python3
"""Completion-style HumanEval prompts as HF transformers tokenizes them.

humaneval-prompt-ids.json: for a few HumanEval problems, `tokenizer(prompt)["input_ids"]` (what
OpenAI's harness and a transformers user feed a base model) with the default model's tokenizer,
loaded by `AutoTokenizer.from_pretrained` from `smolbit convert`'s output of the default GGUF
(transformers' GGUF tokenizer loader needs torch, which this machine cannot install; the
converted tokenizer files are themselves checked against gguf-py by smolbit-weights' tests).

    smolbit convert "$(cargo xtask model-path)" --out /tmp/smollm2
    python3 testdata/make_humaneval_fixtures.py /tmp/smollm2 ~/.cache/smolbit/datasets/HumanEval.jsonl

Needs `pip install transformers` (tested with 5.24.0).
"""

import json
import sys
from pathlib import Path

import transformers
from transformers import AutoTokenizer

PROBLEMS = ["HumanEval/0", "HumanEval/10", "HumanEval/32", "HumanEval/163"]


def main() -> None:
    model_dir, humaneval = sys.argv[1], sys.argv[2]
    tok = AutoTokenizer.from_pretrained(model_dir)
    problems = {}
    for line in Path(humaneval).read_text().splitlines():
        p = json.loads(line)
        problems[p["task_id"]] = p["prompt"]
    out = {
        "transformers": transformers.__version__,
        "tokenizer_class": type(tok).__name__,
        "problems": [
            {"task_id": t, "input_ids": tok(problems[t])["input_ids"]} for t in PROBLEMS
        ],
    }
    dest = Path(__file__).resolve().parent / "humaneval-prompt-ids.json"
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
