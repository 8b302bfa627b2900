#!/usr/bin/env python3
"""Check that HF transformers loads a directory written by `smolbit convert` from the default GGUF.

    smolbit convert SmolLM2-135M-Instruct.Q4_1.gguf --out /tmp/smol2
    python3 testdata/check_converted.py /tmp/smol2

Loads the model and the tokenizer with AutoModelForCausalLM / AutoTokenizer (no GGUF involved),
compares last-position logits with testdata/smollm2-reference.json (transformers' own GGUF
loader), the tokenizer's ids for the reference strings, and the chat-formatted prompt ids.
Exits non-zero on any mismatch.
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ref = json.loads((Path(__file__).resolve().parent / "smollm2-reference.json").read_text())
d = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(d)
bad = 0
for name, v in ref["logits"].items():
    with torch.no_grad():
        out = model(torch.tensor([v["tokens"]])).logits[0]
    diff = (out[-1][v["last_top100_ids"]] - torch.tensor(v["last_top100_logits"])).abs().max().item()
    same = out.argmax(-1).tolist() == [t[0] for t in v["top10"]]
    print(f"logits {name}: max |diff| {diff:.2e}, top-1 same: {same}")
    bad += diff > 2e-3 or not same
for t in ref["tokenizer"]:
    ids = tok(t["text"], add_special_tokens=False)["input_ids"]
    print(f"tokenizer {t['text'][:24]!r}: {'ok' if ids == t['ids'] else 'MISMATCH'}")
    bad += ids != t["ids"]
for g in ref["greedy"]:
    ids = tok.apply_chat_template([{"role": "user", "content": g["prompt"]}], add_generation_prompt=True, tokenize=True, return_dict=False)
    print(f"chat template {g['prompt'][:24]!r}: {'ok' if list(ids) == g['prompt_tokens'] else 'MISMATCH'}")
    bad += list(ids) != g["prompt_tokens"]
print("all checks passed" if not bad else f"{bad} checks failed")
sys.exit(1 if bad else 0)
