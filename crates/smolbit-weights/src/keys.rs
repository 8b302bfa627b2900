//! GGUF metadata keys, in one place (names from gguf-py's `constants.py` `Keys`).
//!
//! Keys under an architecture prefix are built with [`arch_key`], e.g.
//! `arch_key("llama", BLOCK_COUNT)` is `llama.block_count`.

/// `general.architecture`: `llama`, `smollm3`, ...
pub const GENERAL_ARCHITECTURE: &str = "general.architecture";
/// `general.alignment`: data section alignment.
pub const GENERAL_ALIGNMENT: &str = "general.alignment";
/// `general.name`
pub const GENERAL_NAME: &str = "general.name";

/// `{arch}.context_length`
pub const CONTEXT_LENGTH: &str = "context_length";
/// `{arch}.embedding_length`
pub const EMBEDDING_LENGTH: &str = "embedding_length";
/// `{arch}.block_count`
pub const BLOCK_COUNT: &str = "block_count";
/// `{arch}.feed_forward_length`
pub const FEED_FORWARD_LENGTH: &str = "feed_forward_length";
/// `{arch}.attention.head_count`
pub const HEAD_COUNT: &str = "attention.head_count";
/// `{arch}.attention.head_count_kv`
pub const HEAD_COUNT_KV: &str = "attention.head_count_kv";
/// `{arch}.attention.key_length`: head dimension when it is not embedding / heads.
pub const KEY_LENGTH: &str = "attention.key_length";
/// `{arch}.attention.layer_norm_rms_epsilon`
pub const RMS_EPS: &str = "attention.layer_norm_rms_epsilon";
/// `{arch}.rope.dimension_count`
pub const ROPE_DIMENSION_COUNT: &str = "rope.dimension_count";
/// `{arch}.rope.freq_base`
pub const ROPE_FREQ_BASE: &str = "rope.freq_base";
/// `{arch}.rope.scaling.type`
pub const ROPE_SCALING_TYPE: &str = "rope.scaling.type";
/// `{arch}.hidden_activation`: the FFN activation (llama.cpp's `bitnet` architecture).
pub const HIDDEN_ACTIVATION: &str = "hidden_activation";
/// `{arch}.vocab_size`
pub const VOCAB_SIZE: &str = "vocab_size";

/// `tokenizer.ggml.model`: `gpt2` for byte-level BPE.
pub const TOKENIZER_MODEL: &str = "tokenizer.ggml.model";
/// `tokenizer.ggml.pre`: pre-tokenizer name (`smollm`, `gpt-2`, `llama-bpe`, ...).
pub const TOKENIZER_PRE: &str = "tokenizer.ggml.pre";
/// `tokenizer.ggml.tokens`
pub const TOKENIZER_TOKENS: &str = "tokenizer.ggml.tokens";
/// `tokenizer.ggml.token_type`
pub const TOKENIZER_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
/// `tokenizer.ggml.merges`
pub const TOKENIZER_MERGES: &str = "tokenizer.ggml.merges";
/// `tokenizer.ggml.bos_token_id`
pub const TOKENIZER_BOS_ID: &str = "tokenizer.ggml.bos_token_id";
/// `tokenizer.ggml.eos_token_id`
pub const TOKENIZER_EOS_ID: &str = "tokenizer.ggml.eos_token_id";
/// `tokenizer.ggml.eot_token_id`: end of turn.
pub const TOKENIZER_EOT_ID: &str = "tokenizer.ggml.eot_token_id";
/// `tokenizer.ggml.unknown_token_id`
pub const TOKENIZER_UNK_ID: &str = "tokenizer.ggml.unknown_token_id";
/// `tokenizer.ggml.padding_token_id`
pub const TOKENIZER_PAD_ID: &str = "tokenizer.ggml.padding_token_id";
/// `tokenizer.ggml.add_bos_token`
pub const TOKENIZER_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
/// `tokenizer.ggml.add_eos_token`
pub const TOKENIZER_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
/// `tokenizer.chat_template`
pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// `{arch}.{key}`
pub fn arch_key(arch: &str, key: &str) -> String {
    format!("{arch}.{key}")
}
