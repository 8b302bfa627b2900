#!/usr/bin/env python3
"""Generate smolbit's golden test fixtures with independent implementations.

Everything under testdata/ except the real-model summary (make_reference.py) comes from here:

- dequant.gguf + dequant_expected.safetensors: one tensor per ggml type holding random blocks,
  written by gguf-py's GGUFWriter, and gguf-py's own numpy dequantization of the same bytes;
  plus one metadata key of every GGUF value type (expected values in dequant_metadata.json).
- tiny-llama/: a random LlamaForCausalLM (GQA, untied head) saved by transformers in float16,
  sharded (model.safetensors.index.json), with config.json rewritten to the legacy top-level
  `rope_theta` spelling; logits.json holds transformers' float32 logits for every position.
- tiny-smollm3/: a random SmolLM3ForCausalLM (GQA, tied embeddings, no-RoPE layer 3 of 4,
  rope_theta in `rope_parameters`) in float32, with logits.json.
- tiny-llama.gguf: a llama-architecture GGUF written with gguf-py: q/k rows permuted as
  llama.cpp's convert_hf_to_gguf.py does, tensors in Q8_0, Q4_1, Q4_K (random blocks) and F32;
  tiny-llama-gguf-logits.json holds the logits of transformers' own GGUF loader for that file.
- tiny-smollm3.gguf: the tiny SmolLM3 written as a `smollm3` GGUF (F32, permuted q/k); its logits
  must equal tiny-smollm3/logits.json.

Run from the repository root with a Python that has torch, transformers, gguf, safetensors:
    python3 testdata/make_fixtures.py
"""

import json
import os
import shutil
import sys
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import save_file

OUT = Path(__file__).resolve().parent
TOKENS = [1, 17, 42, 99, 3, 200, 7, 150, 64, 31, 255, 128]
SEED = 20261126


def dump_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.write("\n")


# --------------------------------------------------------------------------- dequantization

# Offsets of the f16 scale fields inside each block, which we set to sane finite values so
# that random bytes never produce NaN or Inf scales.
SCALE_FIELDS = {
    Q.Q4_0: [0],
    Q.Q4_1: [0, 2],
    Q.Q5_0: [0],
    Q.Q5_1: [0, 2],
    Q.Q8_0: [0],
    Q.Q4_K: [0, 2],
    Q.Q5_K: [0, 2],
    Q.Q6_K: [208],
}


def random_blocks(rng, qtype, n_elements, scale=0.01):
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = n_elements // block
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in SCALE_FIELDS[qtype]:
        vals = (rng.random(n_blocks) * scale + scale / 10).astype(np.float16)
        raw[:, off : off + 2] = vals.view(np.uint8).reshape(n_blocks, 2)
    return raw


def make_dequant(rng):
    rows, cols = 2, 512
    writer = gguf.GGUFWriter(str(OUT / "dequant.gguf"), "llama")
    # One key per GGUF value type.
    meta = {
        "test.u8": ("uint8", 200),
        "test.i8": ("int8", -100),
        "test.u16": ("uint16", 60000),
        "test.i16": ("int16", -30000),
        "test.u32": ("uint32", 4000000000),
        "test.i32": ("int32", -2000000000),
        "test.f32": ("float32", 0.5),
        "test.bool": ("bool", True),
        "test.string": ("string", "héllo ✓"),
        "test.u64": ("uint64", 2**63 + 5),
        "test.i64": ("int64", -(2**62)),
        "test.f64": ("float64", 1e-300),
    }
    for key, (kind, value) in meta.items():
        getattr(writer, f"add_{kind}")(key, value)
    writer.add_array("test.array_str", ["a", "bc", ""])
    writer.add_array("test.array_i32", [1, -2, 3])
    expected = {}
    for qtype in SCALE_FIELDS:
        raw = random_blocks(rng, qtype, rows * cols)
        raw = raw.reshape(rows, -1)
        writer.add_tensor(qtype.name.lower(), raw, raw_dtype=qtype)
        expected[qtype.name.lower()] = gguf.quants.dequantize(raw, qtype).astype(np.float32)
    for name, dtype, qtype in [("f32", np.float32, Q.F32), ("f16", np.float16, Q.F16)]:
        vals = rng.standard_normal((rows, cols)).astype(dtype)
        writer.add_tensor(name, vals, raw_dtype=qtype)
        expected[name] = vals.astype(np.float32)
    bf = gguf.quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32), Q.BF16)
    writer.add_tensor("bf16", bf, raw_dtype=Q.BF16)
    expected["bf16"] = gguf.quants.dequantize(bf, Q.BF16).astype(np.float32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    save_file(expected, str(OUT / "dequant_expected.safetensors"))
    meta_json = {k: v for k, (_, v) in meta.items()}
    meta_json["test.u64"] = str(meta["test.u64"][1])  # beyond JSON's exact integers
    meta_json["test.array_str"] = ["a", "bc", ""]
    meta_json["test.array_i32"] = [1, -2, 3]
    dump_json(OUT / "dequant_metadata.json", meta_json)


# --------------------------------------------------------------------------- tiny models


def logits_of(model, tokens):
    with torch.no_grad():
        out = model(torch.tensor([tokens])).logits[0].float()
    return out.tolist()


def make_tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 50000.0},
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    # Larger-than-init weights so that attention and the MLP matter in the logits.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    model = model.to(torch.float16)
    d = OUT / "tiny-llama"
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, max_shard_size="100KB")
    # Rewrite to the legacy spelling and let transformers re-read it: the reference logits come
    # from the reloaded model, so transformers itself confirms what the legacy keys mean.
    c = json.loads((d / "config.json").read_text())
    c.pop("rope_parameters", None)
    c.pop("rope_scaling", None)
    c["rope_theta"] = 50000.0
    (d / "config.json").write_text(json.dumps(c, indent=2))
    reloaded = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    assert reloaded.config.rope_parameters["rope_theta"] == 50000.0
    dump_json(d / "logits.json", {"tokens": TOKENS, "logits": logits_of(reloaded, TOKENS)})
    return reloaded


def make_tiny_smollm3():
    from transformers import SmolLM3Config, SmolLM3ForCausalLM

    torch.manual_seed(SEED + 1)
    cfg = SmolLM3Config(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=True,
        no_rope_layer_interval=4,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    assert cfg.no_rope_layers == [1, 1, 1, 0]
    model = SmolLM3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.15)
    d = OUT / "tiny-smollm3"
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d)
    dump_json(d / "logits.json", {"tokens": TOKENS, "logits": logits_of(model, TOKENS)})
    return model


# --------------------------------------------------------------------------- GGUF models


def llama_cpp_permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute, applied to a [rows, cols] q or k weight."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add_llama_metadata(writer, arch, cfg, rope_theta):
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(rope_theta)
    writer.add_vocab_size(cfg.vocab_size)


HF_TO_GGUF = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_tensors(model):
    cfg = model.config
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    if not cfg.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    for i in range(cfg.num_hidden_layers):
        for hf, gg in HF_TO_GGUF.items():
            w = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                w = llama_cpp_permute(w, cfg.num_attention_heads)
            elif gg == "attn_k":
                w = llama_cpp_permute(w, cfg.num_key_value_heads)
            out[f"blk.{i}.{gg}.weight"] = w
    return out


def make_llama_gguf(model, rng):
    from transformers import AutoModelForCausalLM

    cfg = model.config
    path = OUT / "tiny-llama.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    add_llama_metadata(writer, "llama", cfg, 50000.0)
    for name, w in gguf_tensors(model).items():
        if w.ndim == 1:
            writer.add_tensor(name, w.astype(np.float32))
        elif "ffn_down" in name:
            # 256-wide rows: random Q4_K blocks (gguf-py cannot quantize k-quants); both
            # transformers and smolbit dequantize the same bytes.
            raw = random_blocks(rng, Q.Q4_K, w.size, scale=0.02).reshape(w.shape[0], -1)
            writer.add_tensor(name, raw, raw_dtype=Q.Q4_K)
        elif "attn_q" in name or "attn_v" in name or "ffn_gate" in name:
            writer.add_tensor(name, gguf.quants.quantize(w, Q.Q4_1), raw_dtype=Q.Q4_1)
        else:
            writer.add_tensor(name, gguf.quants.quantize(w, Q.Q8_0), raw_dtype=Q.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ref = AutoModelForCausalLM.from_pretrained(str(OUT), gguf_file=path.name, dtype=torch.float32).eval()
    dump_json(OUT / "tiny-llama-gguf-logits.json", {"tokens": TOKENS, "logits": logits_of(ref, TOKENS)})


def make_smollm3_gguf(model):
    cfg = model.config
    writer = gguf.GGUFWriter(str(OUT / "tiny-smollm3.gguf"), "smollm3")
    add_llama_metadata(writer, "smollm3", cfg, 100000.0)
    for name, w in gguf_tensors(model).items():
        writer.add_tensor(name, w.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main():
    rng = np.random.default_rng(SEED)
    make_dequant(rng)
    llama = make_tiny_llama()
    smol = make_tiny_smollm3()
    make_llama_gguf(llama, rng)
    make_smollm3_gguf(smol)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote fixtures under {OUT} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    sys.exit(main())
