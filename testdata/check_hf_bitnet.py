#!/usr/bin/env python3
"""Check smolbit's `--export hf-bitnet` against transformers' BitNet integration, and smolbit's
b158 trits against an independent numpy absmean on the same weights.

    smolbit quantize --model <f32 dir> --scheme b158 --export hf-bitnet --out /tmp/bitnet
    smolbit quantize --model <f32 dir> --scheme b158 --out /tmp/b158
    python3 testdata/check_hf_bitnet.py <f32 dir> /tmp/bitnet /tmp/b158 [smolbit binary]

1. numpy: for every block linear of the f32 model, `inv = 1/max(mean|W|, 1e-5)` (mean in float64),
   `q = clip(rint(W * inv), -1, 1)` (`np.rint` rounds half to even, like torch.round); unpack the
   export's uint8 weights (pack_weights layout) and require identical trits, and
   `weight_scale == inv`.
2. transformers loads the export (`AutoModelForCausalLM`, BitLinear, int8 activations); its logits
   for a few token sequences are compared with `smolbit logits` on smolbit's own b158 checkpoint.
Prints the figures and exits non-zero on a mismatch of trits or top-1 tokens.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

f32_dir, export_dir, b158_dir = map(Path, sys.argv[1:4])
smolbit = sys.argv[4] if len(sys.argv) > 4 else "target/debug/smolbit"

src = load_file(str(f32_dir / "model.safetensors"))
exp = load_file(str(export_dir / "model.safetensors"))
mismatch = total = 0
for name, w in src.items():
    if not any(p in name for p in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")):
        continue
    w = w.astype(np.float32)
    inv = np.float32(1.0) / np.float32(max(np.abs(w.astype(np.float64)).mean(), 1e-5))
    q = np.clip(np.rint(w * inv), -1, 1).astype(np.int8)
    packed = exp[name]
    rows = packed.shape[0] * 4
    ours = np.concatenate([((packed >> (2 * i)) & 3).astype(np.int8) - 1 for i in range(4)], axis=0)
    assert ours.shape == q.shape == (rows, w.shape[1])
    mismatch += int((ours != q).sum())
    total += q.size
    scale = exp[name + "_scale"][0]
    assert scale == inv, f"{name}: weight_scale {scale} != numpy {inv}"
print(f"numpy absmean trits: {mismatch} mismatches of {total} ({len([k for k in exp if k.endswith('_scale')])} layers)")

from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained(str(export_dir), dtype=torch.float32).eval()
assert type(model.model.layers[0].self_attn.q_proj).__name__ == "BitLinear"
rng = np.random.default_rng(11)
seqs = [rng.integers(0, model.config.vocab_size, 32).tolist(), [1, 17, 42, 99, 3, 200, 7, 150]]
worst = 0.0
top1_same = top1_total = 0
for ids in seqs:
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "l.json"
        subprocess.run([smolbit, "logits", "--model", str(b158_dir), "--tokens", ",".join(map(str, ids)), "--out", str(out)], check=True)
        ours = json.loads(out.read_text())
    diff = (torch.tensor(ours["last_logits"]) - ref[-1]).abs().max().item()
    worst = max(worst, diff)
    top1_same += sum(int(t[0] == r) for t, r in zip(ours["top10"], ref.argmax(-1).tolist()))
    top1_total += len(ids)
print(f"transformers BitLinear vs smolbit b158: last-position max |logit diff| {worst:.2e}, top-1 same at {top1_same}/{top1_total} positions")
sys.exit(0 if mismatch == 0 and top1_same == top1_total else 1)
