#!/usr/bin/env python3
"""Natively ternary checkpoints made by independent implementations: transformers' BitNet
integration (models, packing, logits) and gguf-py (TQ1_0/TQ2_0 quantizer and dequantizer), plus
an I2_S GGUF written from bitnet.cpp's published layout and read back by a separate numpy reader.

Writes testdata/native/:
- bitnet-online/: BitNetForCausalLM (relu2, attn/ffn sub-norms, tied head) with bfloat16 master
  weights and quantization_config {bitnet, autobitlinear, online}: transformers ternarizes every
  projection at load (WeightQuant, absmean per tensor), as for the published `-bf16` weights.
- bitnet-auto/: the same architecture with an untied head, offline packed (uint8 [out/4, in] in
  `pack_weights` layout) with weight_scale = mean|W| ("autobitlinear" multiplies: 2B4T's files).
- bitnet-bitlinear/: tied head, offline packed with weight_scale = 1 / mean|W| ("bitlinear"
  divides).
- falcon3/: LlamaForCausalLM (silu, no sub-norms, untied head) with {bitnet, offline,
  modules_to_not_convert: [lm_head]} and the default linear class (bitlinear): Falcon3-1.58bit's
  layout.
- falcon3-rmsnorm/: the same with use_rms_norm (a learnable RMSNorm before every BitLinear).
- each has logits.json: transformers' float32 logits at every position of its tokens.
- gguf/: one BitNet model whose projections are T * s (T ternary, s an f16 value per tensor), as
  an HF offline directory (gguf/hf, with logits.json) and as GGUFs with the same trits and
  scales: tq2_0.gguf (arch bitnet-b1.58, gguf-py's TQ2_0 quantizer), tq1_0.gguf (arch bitnet-25,
  TQ1_0), i2_s.gguf (arch bitnet-b1.58, type 36, written here from bitnet.cpp's
  quantize_i2_s layout: 2-bit codes MSB first in 128-element blocks, one f32 scale after the
  data), tq2_0-scale.gguf (llama.cpp's arch `bitnet`: trits with d = 1 and a per-tensor
  `<name>.scale`), each with an F16 token_embd and the official file's placeholder chat template
  and no tokenizer.ggml.pre. expected.json: per projection (GGUF name) the sha256 of the trits (int8,
  row-major [out, in]), the scale, and the sha256 of gguf-py's float32 dequantization of the
  TQ1_0 and TQ2_0 bytes.
- llama-i2s/: a Falcon3-style model (Llama graph, BitLinear with `1 / mean|W|` scales) as an
  HF directory with transformers' logits, and as model-i2_s.gguf the way bitnet.cpp's converter
  writes Falcon3 (architecture `llama`, q/k rows permuted as llama.cpp's LlamaModel.permute
  does, I2_S projections, no vocabulary).
- bitnet-2b4t-chat.json: BitNet b1.58 2B4T's chat template rendered by transformers'
  `render_jinja_template` for a few conversations.

Run from the repository root with a Python that has torch, transformers (5.x), accelerate,
gguf (0.19), safetensors and numpy:
    TORCHDYNAMO_DISABLE=1 python3 testdata/make_native_fixtures.py
(TORCHDYNAMO_DISABLE turns transformers' @torch.compile decorators into plain calls.)
"""

import hashlib
import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, BitNetConfig, BitNetForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.integrations.bitnet import pack_weights, unpack_weights

OUT = Path(__file__).resolve().parent / "native"
SEED = 20261201
TOKENS = [1, 17, 42, 99, 3, 200, 7, 150, 64, 31, 255, 128]
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
I2_S = 36  # bitnet.cpp's GGML_TYPE_I2_S; gguf-py 0.19 does not know it


def dump_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.write("\n")


def logits_of(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().tolist()


def randomize(model, std):
    """Weights large enough that attention and the MLP matter; norms away from 1."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, std)
            else:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))


def absmean(w):
    """transformers' WeightQuant: trits and the scale mean|W| (float32)."""
    s = w.float().abs().mean().clamp(min=1e-5)
    return (w.float() / s).round().clamp(-1, 1).to(torch.int8), float(s)


def is_projection(name):
    return name.endswith(".weight") and any(f".{p}." in name for p in PROJ)


def write_hf(model, d, quant, packed=None, extra=None, dtype=torch.float32):
    """Save `model`'s config and weights to `d`: projections as given in `packed`
    (name -> (uint8 weight, weight_scale)) or as floats, everything else as floats."""
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    cfg = model.config.to_dict()
    cfg["architectures"] = [type(model).__name__]
    cfg["quantization_config"] = quant
    cfg["dtype"] = str(dtype).removeprefix("torch.")
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tensors = {}
    for name, p in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        if packed is not None and name in packed:
            w, scale = packed[name]
            tensors[name] = w
            tensors[name + "_scale"] = torch.tensor([scale], dtype=torch.float32)
        else:
            tensors[name] = p.detach().to(dtype).contiguous()
    tensors.update(extra or {})
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})


def pack_model(model, convention):
    """Every projection ternarized (absmean per tensor) and packed with transformers'
    pack_weights; weight_scale = mean|W| for autobitlinear, 1 / mean|W| for bitlinear."""
    packed = {}
    for name, p in model.state_dict().items():
        if not is_projection(name) or name == "lm_head.weight":
            continue
        t, s = absmean(p)
        w = pack_weights(t.clone())
        assert torch.equal(unpack_weights(w, dtype=torch.float32), t.float()), name
        packed[name] = (w, s if convention == "autobitlinear" else 1.0 / s)
    return packed


def reload_and_check(d, linear_class):
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    got = type(model.model.layers[0].self_attn.q_proj).__name__
    assert got == linear_class, f"{d}: {got}"
    return model


def bitnet_config(**kw):
    base = dict(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        bos_token_id=1,
        eos_token_id=2,
    )
    base.update(kw)
    return BitNetConfig(**base)


def make_bitnet_hf():
    variants = [
        # (dir, tie, quantization_config, linear class transformers must build)
        ("bitnet-online", True, {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}, "AutoBitLinear"),
        ("bitnet-auto", False, {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}, "AutoBitLinear"),
        ("bitnet-bitlinear", True, {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"}, "BitLinear"),
    ]
    for i, (name, tie, quant, cls) in enumerate(variants):
        torch.manual_seed(SEED + i)
        model = BitNetForCausalLM(bitnet_config(tie_word_embeddings=tie)).eval()
        randomize(model, 0.1)
        d = OUT / name
        packed = None if quant["quantization_mode"] == "online" else pack_model(model, quant["linear_class"])
        # The online variant in bfloat16, as the published master weights (`-bf16`).
        dtype = torch.bfloat16 if packed is None else torch.float32
        write_hf(model, d, quant, packed, dtype=dtype)
        ref = reload_and_check(d, cls)
        dump_json(d / "logits.json", {"tokens": TOKENS, "logits": logits_of(ref, TOKENS)})


def make_falcon3():
    for i, (name, rms) in enumerate([("falcon3", False), ("falcon3-rmsnorm", True)]):
        torch.manual_seed(SEED + 10 + i)
        cfg = LlamaConfig(
            vocab_size=256,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=128,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000042.0},
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
        )
        model = LlamaForCausalLM(cfg).eval()
        randomize(model, 0.1)
        quant = {"quant_method": "bitnet", "modules_to_not_convert": ["lm_head"]}
        extra = {}
        if rms:
            quant.update({"use_rms_norm": True, "rms_norm_eps": 1e-6})
            for name_, p in model.state_dict().items():
                if is_projection(name_) and name_ != "lm_head.weight":
                    extra[name_.replace(".weight", ".rms_norm.weight")] = 1.0 + 0.3 * torch.randn(p.shape[1])
        d = OUT / name
        write_hf(model, d, quant, pack_model(model, "bitlinear"), extra)
        ref = reload_and_check(d, "BitLinear")
        if rms:
            norm = ref.model.layers[0].self_attn.q_proj.rms_norm
            assert norm is not None and torch.equal(norm.weight, extra["model.layers.0.self_attn.q_proj.rms_norm.weight"])
        dump_json(d / "logits.json", {"tokens": TOKENS, "logits": logits_of(ref, TOKENS)})


# --------------------------------------------------------------------------- GGUF

GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.attn_sub_norm": "attn_sub_norm",
    "mlp.ffn_sub_norm": "ffn_sub_norm",
}

# bitnet.cpp's utils/convert-ms-to-gguf-bitnet.py writes this placeholder into every bitnet GGUF.
PLACEHOLDER_TEMPLATE = (
    "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ 'Human: ' + message['content'] + '\\n\\nBITNETAssistant: ' + eos_token }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)


def i2s_encode(t):
    """bitnet.cpp quantize_i2_s (ACT_PARALLEL, x86): over the flattened tensor, blocks of 128
    values in 32 bytes; value j of a block goes to byte j % 32 at bits 7-6, 5-4, 3-2, 1-0 for
    j // 32 = 0, 1, 2, 3; codes 0, 1, 2 for -1, 0, +1."""
    flat = (t.reshape(-1).astype(np.int16) + 1).astype(np.uint8)
    out = np.zeros(flat.size // 4, dtype=np.uint8)
    for i in range(flat.size // 128):
        for j in range(128):
            out[i * 32 + j % 32] |= flat[i * 128 + j] << (6 - 2 * (j // 32))
    return out


def i2s_decode(data, n):
    """An independent reader of the same layout (vectorized, by bit position)."""
    codes = data[: n // 4].reshape(-1, 32)
    planes = [(codes >> shift) & 3 for shift in (6, 4, 2, 0)]  # each [blocks, 32]
    vals = np.stack(planes, axis=1).reshape(-1)  # block, plane, position
    scale = np.frombuffer(data[n // 4 : n // 4 + 4].tobytes(), dtype=np.float32)[0]
    return vals.astype(np.int8) - 1, scale


def tiny_tokenizer(writer):
    """A byte-level BPE vocabulary of 64 tokens ending with Llama 3's three specials, without
    tokenizer.ggml.pre (as the official 2B4T GGUF)."""
    tokens = [chr(c) for c in range(ord("a"), ord("a") + 26)] + [chr(c) for c in range(ord("A"), ord("A") + 26)]
    tokens += ["Ġ", "Ċ", ":", ".", "Ġa", "Ġb", "ab", "ba", "Ġab"]
    tokens += ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    assert len(tokens) == 64
    types = [1] * 61 + [3, 3, 3]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(["Ġ a", "Ġ b", "a b", "b a", "Ġa b"])
    writer.add_bos_token_id(61)
    writer.add_eos_token_id(62)
    writer.add_add_bos_token(True)
    writer.add_chat_template(PLACEHOLDER_TEMPLATE)


def make_gguf():
    torch.manual_seed(SEED + 20)
    cfg = bitnet_config(
        vocab_size=64,
        hidden_size=256,
        intermediate_size=256,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        bos_token_id=61,
        eos_token_id=62,
    )
    model = BitNetForCausalLM(cfg).eval()
    randomize(model, 0.05)
    d = OUT / "gguf"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    # The embedding in f16 values (the GGUFs store it as F16).
    sd["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"].half().float()
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(sd["model.embed_tokens.weight"])
    packed, trits, expected = {}, {}, {}
    for name, w in sd.items():
        if not is_projection(name) or name == "lm_head.weight":
            continue
        t, s = absmean(w)
        s16 = float(np.float16(s))  # exact in every format: f16 (TQ), f32 (I2_S, HF)
        # Every 256-block of every row holds a nonzero trit, so TQ's absmax is s16 everywhere.
        assert (t.reshape(-1, 256) != 0).any(dim=1).all(), name
        packed[name] = (pack_weights(t.clone()), s16)
        gg = "blk.{}.{}.weight".format(name.split(".")[2], GGUF_NAMES[name.split(".", 3)[3].rsplit(".", 1)[0]])
        trits[gg] = (t.numpy(), s16)
        expected[gg] = {
            "shape": list(t.shape),
            "trits_sha256": hashlib.sha256(t.numpy().astype(np.int8).tobytes()).hexdigest(),
            "scale": s16,
        }
    write_hf(model, d / "hf", {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}, packed)
    ref = reload_and_check(d / "hf", "AutoBitLinear")
    tokens = [61, 1, 17, 42, 9, 3, 20, 7, 50, 63, 31, 5]
    dump_json(d / "hf" / "logits.json", {"tokens": tokens, "logits": logits_of(ref, tokens)})

    floats = {"token_embd.weight": sd["model.embed_tokens.weight"].numpy().astype(np.float16), "output_norm.weight": sd["model.norm.weight"].numpy()}
    for name, w in sd.items():
        if name.startswith("model.layers.") and w.dim() == 1:
            i, rest = name.split(".")[2], name.split(".", 3)[3].rsplit(".", 1)[0]
            floats[f"blk.{i}.{GGUF_NAMES[rest]}.weight"] = w.numpy()

    def writer_for(path, arch):
        w = gguf.GGUFWriter(str(path), arch)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_rope_freq_base(500000.0)
        w.add_vocab_size(cfg.vocab_size)
        tiny_tokenizer(w)
        for k, v in floats.items():
            w.add_tensor(k, v)
        return w

    def finish(w):
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    for qtype, arch in [(Q.TQ2_0, "bitnet-b1.58"), (Q.TQ1_0, "bitnet-25")]:
        w = writer_for(d / f"{qtype.name.lower()}.gguf", arch)
        for gg, (t, s) in trits.items():
            data = gguf.quants.quantize((t.astype(np.float32) * np.float32(s)), qtype)
            deq = gguf.quants.dequantize(data, qtype).astype(np.float32)
            assert np.array_equal(deq, t.astype(np.float32) * np.float32(s)), gg
            expected[gg][f"{qtype.name.lower()}_dequant_sha256"] = hashlib.sha256(deq.tobytes()).hexdigest()
            w.add_tensor(gg, data, raw_dtype=qtype)
        finish(w)

    # llama.cpp's own `bitnet` architecture (relu² named by `bitnet.hidden_activation`, SiLU
    # otherwise) with the scale outside the trits: TQ2_0 blocks of the bare trits (d = 1) and a
    # per-tensor `<name>.scale` that its graph multiplies after the product (build_lora_mm).
    w = writer_for(d / "tq2_0-scale.gguf", "bitnet")
    w.add_string("bitnet.hidden_activation", "relu2")
    for gg, (t, s) in trits.items():
        w.add_tensor(gg, gguf.quants.quantize(t.astype(np.float32), Q.TQ2_0), raw_dtype=Q.TQ2_0)
        w.add_tensor(gg.replace(".weight", ".scale"), np.array([s], dtype=np.float32))
    finish(w)

    w = writer_for(d / "i2_s.gguf", "bitnet-b1.58")
    w.add_file_type(40)  # LLAMA_FTYPE_MOSTLY_I2_S
    for gg, (t, s) in trits.items():
        n = t.size
        data = np.concatenate([i2s_encode(t), np.frombuffer(np.float32(s).tobytes(), dtype=np.uint8), np.zeros(28, dtype=np.uint8)])
        back, scale = i2s_decode(data, n)
        assert np.array_equal(back, t.reshape(-1)) and scale == np.float32(s), gg
        # Passed as int8 so that gguf-py keeps the logical shape and the unknown type id as given.
        w.add_tensor(gg, data.view(np.int8), raw_shape=list(t.shape), raw_dtype=I2_S)
    finish(w)
    dump_json(d / "expected.json", {"generator": "testdata/make_native_fixtures.py", "tensors": expected})


def make_llama_i2s():
    """A Falcon3-style model (Llama graph, BitLinear) as bitnet.cpp's converter writes such
    models: architecture `llama`, q/k rows permuted as llama.cpp's LlamaModel.permute does, I2_S
    projections. transformers' logits come from the HF directory of the same weights."""
    torch.manual_seed(SEED + 30)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=256,
        intermediate_size=256,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=128,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000042.0},
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    randomize(model, 0.05)
    d = OUT / "llama-i2s"
    shutil.rmtree(d, ignore_errors=True)
    packed, trits = {}, {}
    for name, w in model.state_dict().items():
        if not is_projection(name) or name == "lm_head.weight":
            continue
        t, s = absmean(w.float())
        s16 = float(np.float16(s))
        packed[name] = (pack_weights(t.clone()), 1.0 / s16)
        trits[name] = (t.numpy(), s16)
    write_hf(model, d, {"quant_method": "bitnet", "modules_to_not_convert": ["lm_head"]}, packed)
    ref = reload_and_check(d, "BitLinear")
    tokens = [1, 17, 42, 9, 3, 20, 7, 50, 63, 31, 5, 28]
    dump_json(d / "logits.json", {"tokens": tokens, "logits": logits_of(ref, tokens)})

    def permute(w, n_head):
        # llama.cpp's LlamaModel.permute (convert_hf_to_gguf.py), on a [rows, cols] q or k.
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = gguf.GGUFWriter(str(d / "model-i2_s.gguf"), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(1000042.0)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("no_vocab")
    w.add_file_type(40)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    for name, v in sd.items():
        if not name.startswith("model.layers."):
            continue
        i, rest = name.split(".")[2], name.split(".", 3)[3].rsplit(".", 1)[0]
        gg = f"blk.{i}.{GGUF_NAMES[rest]}.weight"
        if name not in trits:
            w.add_tensor(gg, v)
            continue
        t, s = trits[name]
        if rest == "self_attn.q_proj":
            t = permute(t, cfg.num_attention_heads)
        elif rest == "self_attn.k_proj":
            t = permute(t, cfg.num_key_value_heads)
        data = np.concatenate([i2s_encode(t), np.frombuffer(np.float32(s).tobytes(), dtype=np.uint8), np.zeros(28, dtype=np.uint8)])
        back, scale = i2s_decode(data, t.size)
        assert np.array_equal(back, t.reshape(-1)) and scale == np.float32(s), gg
        w.add_tensor(gg, data.view(np.int8), raw_shape=list(t.shape), raw_dtype=I2_S)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# microsoft/bitnet-b1.58-2B-4T tokenizer_config.json's chat_template (as copied verbatim in
# third-party code); it must render transformers' own test prompt for the model,
# "User: How are you?<|eot_id|>Assistant: " (tests/models/bitnet/test_modeling_bitnet.py).
BITNET_2B4T_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = message['role'] | capitalize + ': '+ message['content'] | trim + '<|eot_id|>' %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)


def make_chat():
    import transformers.utils.chat_template_utils as ctu

    conversations = [
        [{"role": "user", "content": "How are you?"}],
        [{"role": "system", "content": "You write Python. "}, {"role": "user", "content": "  Reverse a string.\n"}],
        [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "ba"}, {"role": "user", "content": "a"}],
    ]
    cases = []
    for messages in conversations:
        out = ctu.render_jinja_template(
            conversations=[messages],
            chat_template=BITNET_2B4T_TEMPLATE,
            add_generation_prompt=True,
            bos_token="<|begin_of_text|>",
            eos_token="<|end_of_text|>",
        )
        rendered = out[0] if isinstance(out, tuple) else out
        cases.append({"messages": messages, "rendered": rendered[0] if isinstance(rendered, list) else rendered})
    assert cases[0]["rendered"] == "User: How are you?<|eot_id|>Assistant: ", cases[0]["rendered"]
    dump_json(OUT / "bitnet-2b4t-chat.json", {"template": BITNET_2B4T_TEMPLATE, "cases": cases})


def main():
    OUT.mkdir(exist_ok=True)
    make_bitnet_hf()
    make_falcon3()
    make_gguf()
    make_llama_i2s()
    make_chat()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
