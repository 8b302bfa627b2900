//! A Hugging Face `tokenizer.json` (and `tokenizer_config.json`) rebuilt from the byte-level BPE
//! tokenizer that llama.cpp stores in GGUF metadata (`tokenizer.ggml.model = "gpt2"`).
//!
//! The pre-tokenizer is chosen by `tokenizer.ggml.pre`, mirroring the regexes llama.cpp's
//! `llama-vocab.cpp` uses for each name; unknown names are refused rather than guessed.

use serde_json::{Value as Json, json};

use crate::gguf::{GgufError, GgufFile, Value};
use crate::keys;

/// llama.cpp's token types (`llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// GPT-2's split regex (tokenizers' ByteLevel `use_regex = true` applies the same one).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer files a GGUF's metadata describes.
#[derive(Debug, Clone)]
pub struct TokenizerFiles {
    /// `tokenizer.json`
    pub tokenizer: Json,
    /// `tokenizer_config.json` (with the chat template when the GGUF has one)
    pub tokenizer_config: Json,
    /// End-of-generation ids besides `tokenizer.ggml.eos_token_id`: the end-of-turn token
    /// (`tokenizer.ggml.eot_token_id`, or `<|eot_id|>` when the chat template ends turns with
    /// it), which a chat must stop on.
    pub end_of_generation: Vec<u32>,
    /// What had to be assumed or replaced, one line each.
    pub warnings: Vec<String>,
}

/// BitNet b1.58 2B4T's chat template, the `chat_template` of `microsoft/bitnet-b1.58-2B-4T`'s
/// `tokenizer_config.json` (as copied in third-party code; it renders transformers' test prompt
/// `User: How are you?<|eot_id|>Assistant: `). bitnet.cpp's GGUF converter
/// (`utils/convert-ms-to-gguf-bitnet.py`) writes a placeholder instead (`Human: ...
/// BITNETAssistant: `), which the model was not trained on.
pub const BITNET_2B4T_CHAT_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = message['role'] | capitalize + ': '+ message['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}";

/// A marker of bitnet.cpp's placeholder template.
const BITNET_PLACEHOLDER: &str = "BITNETAssistant";

fn pre_tokenizer(pre: &str) -> Option<Json> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    Some(match pre {
        // GPT-2's regex, applied by ByteLevel itself.
        "gpt-2" | "gpt2" | "default" | "starcoder" => byte_level(true),
        // SmolLM / SmolLM2: every digit its own piece, then GPT-2's regex.
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level(true),
        ]}),
        // Llama 3 (and SmolLM3, which uses the Llama 3 tokenizer).
        "llama-bpe" | "llama3" | "smollm3" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]}),
        _ => return None,
    })
}

fn string_array<'a>(g: &'a GgufFile, key: &str) -> Result<Vec<&'a str>, GgufError> {
    let v = g.require(key)?;
    let arr = v
        .as_array()
        .ok_or_else(|| g.wrong_type(key, v, "an array of strings"))?;
    arr.iter()
        .map(|e| {
            e.as_str()
                .ok_or_else(|| g.wrong_type(key, e, "a string element"))
        })
        .collect()
}

fn token_id(g: &GgufFile, key: &str, n_tokens: usize) -> Result<Option<u32>, GgufError> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(id) if (id as usize) < n_tokens => Ok(Some(id as u32)),
            _ => Err(GgufError::Invalid {
                path: g.path().to_path_buf(),
                what: format!("{key} is {v}, expected a token id below {n_tokens}"),
            }),
        },
    }
}

/// Build the tokenizer files, or `Ok(None)` when the GGUF carries no tokenizer.
pub fn from_gguf(
    g: &GgufFile,
    model_max_length: usize,
) -> Result<Option<TokenizerFiles>, GgufError> {
    let Some(model) = g.get(keys::TOKENIZER_MODEL) else {
        return Ok(None);
    };
    let invalid = |what: String| GgufError::Invalid {
        path: g.path().to_path_buf(),
        what,
    };
    let model = model.as_str().unwrap_or_default();
    // llama.cpp's names for "no vocabulary" (benchmark files feed token ids).
    if model == "none" || model == "no_vocab" {
        return Ok(None);
    }
    if model != "gpt2" {
        return Err(invalid(format!(
            "tokenizer model '{model}' is not supported (only byte-level BPE, 'gpt2')"
        )));
    }
    let tokens = string_array(g, keys::TOKENIZER_TOKENS)?;
    let mut warnings = Vec::new();
    let pre_name = match g.get(keys::TOKENIZER_PRE) {
        Some(v) => v.as_str().unwrap_or("default").to_string(),
        // bitnet.cpp's 2B4T GGUF has Llama 3's vocabulary without a pre-tokenizer name;
        // llama.cpp then falls back to GPT-2's splitting ("generation quality will be
        // degraded"). Llama 3's own is what the model was trained with.
        None if tokens.contains(&"<|begin_of_text|>") => {
            warnings.push(format!(
                "{}: no {}; the vocabulary is Llama 3's, so its pre-tokenizer (llama-bpe) is used",
                g.path().display(),
                keys::TOKENIZER_PRE
            ));
            "llama-bpe".to_string()
        }
        None => "default".to_string(),
    };
    let pre = pre_tokenizer(&pre_name)
        .ok_or_else(|| invalid(format!("pre-tokenizer '{pre_name}' is not supported")))?;
    let merges = string_array(g, keys::TOKENIZER_MERGES)?;
    let types: Vec<i64> = match g.get(keys::TOKENIZER_TOKEN_TYPE) {
        Some(Value::Array(a)) => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
        Some(v) => return Err(g.wrong_type(keys::TOKENIZER_TOKEN_TYPE, v, "an array of integers")),
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(invalid(format!(
            "{} token types for {} tokens",
            types.len(),
            tokens.len()
        )));
    }

    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        if vocab.insert(t.to_string(), json!(id)).is_some() {
            return Err(invalid(format!(
                "token {t:?} appears twice in {}",
                keys::TOKENIZER_TOKENS
            )));
        }
    }
    let mut merge_pairs = Vec::with_capacity(merges.len());
    for m in &merges {
        let Some((a, b)) = m.split_once(' ') else {
            return Err(invalid(format!(
                "merge {m:?} is not two tokens separated by a space"
            )));
        };
        merge_pairs.push(json!([a, b]));
    }
    let added: Vec<Json> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, ty))| **ty == TOKEN_TYPE_CONTROL || **ty == TOKEN_TYPE_USER_DEFINED)
        .map(|(id, (t, ty))| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": *ty == TOKEN_TYPE_CONTROL})
        })
        .collect();

    let n = tokens.len();
    let bos = token_id(g, keys::TOKENIZER_BOS_ID, n)?;
    let eos = token_id(g, keys::TOKENIZER_EOS_ID, n)?;
    let unk = token_id(g, keys::TOKENIZER_UNK_ID, n)?;
    let pad = token_id(g, keys::TOKENIZER_PAD_ID, n)?;
    let flag = |key: &str, default: bool| g.get(key).and_then(Value::as_bool).unwrap_or(default);
    let add_bos = flag(keys::TOKENIZER_ADD_BOS, false);
    let add_eos = flag(keys::TOKENIZER_ADD_EOS, false);
    let name = |id: Option<u32>| id.map(|i| tokens[i as usize].to_string());

    let post_processor = if add_bos || add_eos {
        let mut single = Vec::new();
        let mut special = serde_json::Map::new();
        let mut push = |id: Option<u32>| {
            if let Some(id) = id {
                let t = tokens[id as usize];
                single.push(json!({"SpecialToken": {"id": t, "type_id": 0}}));
                special.insert(t.to_string(), json!({"id": t, "ids": [id], "tokens": [t]}));
            }
        };
        if add_bos {
            push(bos);
        }
        let mut seq = single.clone();
        seq.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
        single = seq;
        let mut tail = Vec::new();
        if add_eos && let Some(id) = eos {
            let t = tokens[id as usize];
            tail.push(json!({"SpecialToken": {"id": t, "type_id": 0}}));
            special.insert(t.to_string(), json!({"id": t, "ids": [id], "tokens": [t]}));
        }
        single.extend(tail);
        let mut pair = single.clone();
        pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special})
    } else {
        json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
    };

    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merge_pairs,
        },
    });
    let mut config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "bos_token": name(bos),
        "eos_token": name(eos),
        "unk_token": name(unk),
        "pad_token": name(pad),
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": false,
    });
    let mut template = None;
    if let Some(t) = g.get(keys::CHAT_TEMPLATE) {
        let t = t
            .as_str()
            .ok_or_else(|| g.wrong_type(keys::CHAT_TEMPLATE, t, "a string"))?;
        let t = if t.contains(BITNET_PLACEHOLDER) {
            warnings.push(format!(
                "{}: the chat template is bitnet.cpp's placeholder ('Human: ... BITNETAssistant: \
                 '); using BitNet b1.58 2B4T's own ('User: ...<|eot_id|>Assistant: ')",
                g.path().display()
            ));
            BITNET_2B4T_CHAT_TEMPLATE
        } else {
            t
        };
        config["chat_template"] = json!(t);
        template = Some(t);
    }
    let mut end_of_generation = Vec::new();
    if let Some(id) = token_id(g, keys::TOKENIZER_EOT_ID, n)? {
        end_of_generation.push(id);
    }
    if let Some(id) = tokens.iter().position(|t| *t == "<|eot_id|>")
        && template.is_some_and(|t| t.contains("<|eot_id|>"))
        && !end_of_generation.contains(&(id as u32))
    {
        end_of_generation.push(id as u32);
    }
    end_of_generation.retain(|id| Some(*id) != eos);
    Ok(Some(TokenizerFiles {
        tokenizer,
        tokenizer_config: config,
        end_of_generation,
        warnings,
    }))
}
