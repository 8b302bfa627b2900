#!/usr/bin/env python3
"""Independent references for the b1.58 quantizer (numpy) and its inference (transformers BitNet).

Writes:
- b158-numpy-trits.json: for every block linear of the tiny Llama fixture and of the default
  model, sha256 of numpy's absmean trits (int8, row-major) and the float32 `1/mean|W|`;
  smolbit's quantizer must produce the same trits (crates/smolbit-weights/tests/quantize.rs and
  the real-model test).
- tiny-llama-bitnet-logits.json: transformers' BitLinear logits (int8 activations) for the tiny
  Llama exported with `smolbit quantize --export hf-bitnet`, whose trits are checked equal to
  numpy's first.

    cargo build -p smolbit
    smolbit convert "$(cargo xtask model-path)" --out /tmp/smol2
    python3 testdata/make_bitnet_fixtures.py /tmp/smol2
"""

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

OUT = Path(__file__).resolve().parent
SMOLBIT = str(OUT.parent / "target" / "debug" / "smolbit")
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def numpy_b158(w):
    w = w.astype(np.float32)
    inv = np.float32(1.0) / np.float32(max(np.abs(w.astype(np.float64)).mean(), 1e-5))
    return np.clip(np.rint(w * inv), -1, 1).astype(np.int8), inv


def trit_summary(model_dir):
    out = {}
    for name, w in sorted(load_file(str(Path(model_dir) / "model.safetensors")).items()):
        if any(p in name for p in LINEARS):
            q, inv = numpy_b158(w)
            out[name] = {"sha256": hashlib.sha256(q.tobytes()).hexdigest(), "scale_inv": float(inv)}
    return out


def main():
    smol2 = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([SMOLBIT, "convert", str(OUT / "tiny-llama"), "--out", str(tmp / "f32"), "--dtype", "f32"], check=True)
        subprocess.run([SMOLBIT, "quantize", "--model", str(tmp / "f32"), "--scheme", "b158", "--export", "hf-bitnet", "--out", str(tmp / "bitnet")], check=True)
        tiny = trit_summary(tmp / "f32")
        exported = load_file(str(tmp / "bitnet" / "model.safetensors"))
        for name, ref in tiny.items():
            packed = exported[name]
            ours = np.concatenate([((packed >> (2 * i)) & 3).astype(np.int8) - 1 for i in range(4)], axis=0)
            assert hashlib.sha256(ours.tobytes()).hexdigest() == ref["sha256"], name
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(tmp / "bitnet"), dtype=torch.float32).eval()
        assert type(model.model.layers[0].self_attn.q_proj).__name__ == "BitLinear"
        tokens = json.loads((OUT / "tiny-llama" / "logits.json").read_text())["tokens"]
        with torch.no_grad():
            logits = model(torch.tensor([tokens])).logits[0].tolist()
    (OUT / "tiny-llama-bitnet-logits.json").write_text(json.dumps({"tokens": tokens, "logits": logits}, separators=(",", ":")) + "\n")
    summary = {"generator": "testdata/make_bitnet_fixtures.py (numpy absmean, np.rint half-to-even)", "tiny-llama": tiny, "smollm2": trit_summary(smol2)}
    (OUT / "b158-numpy-trits.json").write_text(json.dumps(summary, indent=0) + "\n")
    print("wrote b158-numpy-trits.json and tiny-llama-bitnet-logits.json")


if __name__ == "__main__":
    main()
