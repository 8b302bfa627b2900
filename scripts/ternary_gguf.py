#!/usr/bin/env python3
"""Write a random SmolLM3-3B-shaped F16 GGUF whose projections are already ternary, for bitnet.cpp.

Every projection (attn_q/k/v/output, ffn_gate/up/down) is drawn uniform in +-0.035 (std 0.02, as
the smolbit xtask and scripts/random_gguf.py draw), ternarized with absmean per tensor
(scale = mean|W|, trit = clamp(round(W / scale), -1, 1)) and stored as trit * scale in F16, the
scale rounded to f16 first so that the product is exact. That is the input bitnet.cpp's
`llama-quantize IN OUT I2_S 1` expects (one scale per tensor). Token embedding random F16 (tied,
no output.weight), norms F32 ones. Architecture `llama` (bitnet.cpp's fork serves SmolLM3 shapes
with it; NoPE layers change no cost). No vocabulary: `tokenizer.ggml.model = "no_vocab"` plus
`llama.vocab_size` (read by bitnet.cpp's older fork and by mainline alike); llama-bench feeds ids.

`cargo xtask random-model` cannot write this: its natively ternary formats (gguf-f16) are for
--shape bitnet-2b only and its --arch accepts only bitnet, bitnet-b1.58, bitnet-25.

    python3 -m venv /tmp/gguf-env && /tmp/gguf-env/bin/pip install gguf numpy
    /tmp/gguf-env/bin/python scripts/ternary_gguf.py --out smollm3-3b-ternary-F16.gguf
    <bitnet.cpp>/build/bin/llama-quantize --token-embedding-type Q6_K smollm3-3b-ternary-F16.gguf smollm3-3b-i2_s-q6k.gguf I2_S 1
"""
import argparse

import numpy as np
import gguf

# hidden, layers, heads, kv heads, ffn, vocab, rope theta, rms eps, context (SmolLM3-3B)
HIDDEN, LAYERS, HEADS, KV, FFN, VOCAB, THETA, EPS, CTX = 2048, 36, 16, 4, 11008, 128256, 5_000_000.0, 1e-6, 65536


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--arch", default="llama")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    hd = HIDDEN // HEADS
    rng = np.random.default_rng(a.seed)

    def rand(*shape: int) -> np.ndarray:
        return (rng.random(shape, dtype=np.float32) - 0.5) * 0.07

    def ternary(*shape: int) -> np.ndarray:
        w = rand(*shape)
        scale = float(np.float16(np.abs(w).mean()))
        t = np.clip(np.rint(w / scale), -1, 1)
        return (t * scale + 0.0).astype(np.float16)  # + 0.0: no negative zeros

    # (name, shape in numpy order [rows, cols], kind)
    specs = [("token_embd.weight", (VOCAB, HIDDEN), "embed")]
    for i in range(LAYERS):
        specs += [
            (f"blk.{i}.attn_norm.weight", (HIDDEN,), "norm"),
            (f"blk.{i}.attn_q.weight", (HEADS * hd, HIDDEN), "proj"),
            (f"blk.{i}.attn_k.weight", (KV * hd, HIDDEN), "proj"),
            (f"blk.{i}.attn_v.weight", (KV * hd, HIDDEN), "proj"),
            (f"blk.{i}.attn_output.weight", (HIDDEN, HEADS * hd), "proj"),
            (f"blk.{i}.ffn_norm.weight", (HIDDEN,), "norm"),
            (f"blk.{i}.ffn_gate.weight", (FFN, HIDDEN), "proj"),
            (f"blk.{i}.ffn_up.weight", (FFN, HIDDEN), "proj"),
            (f"blk.{i}.ffn_down.weight", (HIDDEN, FFN), "proj"),
        ]
    specs.append(("output_norm.weight", (HIDDEN,), "norm"))

    w = gguf.GGUFWriter(a.out, a.arch)
    w.add_name("random smollm3-3b ternary (F16)")
    w.add_context_length(CTX)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(THETA)
    w.add_rope_dimension_count(hd)
    w.add_layer_norm_rms_eps(EPS)
    w.add_vocab_size(VOCAB)
    w.add_tokenizer_model("no_vocab")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for name, shape, kind in specs:
        dt = np.dtype(np.float32) if kind == "norm" else np.dtype(np.float16)
        w.add_tensor_info(name, shape, dt, int(np.prod(shape)) * dt.itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape, kind in specs:
        if kind == "norm":
            t = np.ones(shape, dtype=np.float32)
        elif kind == "embed":
            t = rand(*shape).astype(np.float16)
        else:
            t = ternary(*shape)
        w.write_tensor_data(t)
    w.close()


if __name__ == "__main__":
    main()
