#!/usr/bin/env python3
"""Write a random-weight F16 GGUF of SmolLM3-3B's or SmolLM2-135M's shape for llama.cpp.

The llama.cpp side of the benchmark comparison (docs/benchmarks.md): the same shapes as
`cargo xtask random-model`, written with gguf-py (the `gguf` package on PyPI, llama.cpp's own
writer), with no vocabulary (`tokenizer.ggml.model = "none"` plus `<arch>.vocab_size`), which
`llama-bench` accepts since it feeds token ids. Quantize it with `llama-quantize` (Q4_0, TQ2_0).
Speed does not depend on the values.

    python3 -m venv /tmp/gguf-env && /tmp/gguf-env/bin/pip install gguf numpy
    /tmp/gguf-env/bin/python scripts/random_gguf.py --shape smollm3-3b --out /tmp/3b-f16.gguf
"""

import argparse

import numpy as np
import gguf

SHAPES = {
    # arch, hidden, layers, heads, kv heads, ffn, vocab, rope theta, rms eps, context
    "smollm3-3b": ("smollm3", 2048, 36, 16, 4, 11008, 128256, 5_000_000.0, 1e-6, 65536),
    "smollm2-135m": ("llama", 576, 30, 9, 3, 1536, 49152, 100_000.0, 1e-5, 8192),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    arch, hidden, layers, heads, kv, ffn, vocab, theta, eps, ctx = SHAPES[a.shape]
    head_dim = hidden // heads
    rng = np.random.default_rng(0)

    def rand(*shape: int) -> np.ndarray:
        # Uniform in ±0.035 (std 0.02), like the xtask's checkpoints.
        return ((rng.random(shape, dtype=np.float32) - 0.5) * 0.07).astype(np.float16)

    w = gguf.GGUFWriter(a.out, arch)
    w.add_context_length(ctx)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(theta)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(eps)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("none")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    ones = np.ones(hidden, dtype=np.float32)
    w.add_tensor("token_embd.weight", rand(vocab, hidden))
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        w.add_tensor(f"blk.{i}.attn_q.weight", rand(heads * head_dim, hidden))
        w.add_tensor(f"blk.{i}.attn_k.weight", rand(kv * head_dim, hidden))
        w.add_tensor(f"blk.{i}.attn_v.weight", rand(kv * head_dim, hidden))
        w.add_tensor(f"blk.{i}.attn_output.weight", rand(hidden, heads * head_dim))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(ffn, hidden))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(ffn, hidden))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(hidden, ffn))
    w.add_tensor("output_norm.weight", ones)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
