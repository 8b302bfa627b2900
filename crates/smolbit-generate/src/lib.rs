//! Text generation for smolbit: tokenization (`tokenizers`), chat templates (minijinja), sampling
//! with transformers' semantics, a KV-cached generation loop with streaming UTF-8-safe output, and
//! timings measured by the engine itself (time to first token, decode tokens/s). The loop is
//! also exposed one token at a time ([`Generator::start`], [`Generator::step`],
//! [`Generator::step_batch`] for several sequences decoding together, [`Generator::finish`]) for
//! callers that interleave generations, as `smolbit serve` does.
//!
//! [`Generator::load`] reads a model directory (as `smolbit convert` writes): config, weights,
//! `tokenizer.json`, `tokenizer_config.json` (chat template, special tokens) and
//! `generation_config.json` (EOS ids). [`perplexity::evaluate`] scores a model on a text, with KL
//! divergence and top-1 agreement against a reference model.

pub mod perplexity;
pub mod sampling;
pub mod stream;
pub mod template;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use smolbit_model::{Device, Model, ModelError};
use tokenizers::Tokenizer;

pub use sampling::{Sampler, SamplingParams};
pub use smolbit_model::argmax;
pub use stream::TextStream;
pub use template::{ChatTemplate, DateTime, Message, RenderOptions, TemplateError};

/// Why generation could not run.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The model failed to load or run.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// No tokenizer.json in the model directory.
    #[error("{0}: no tokenizer.json (text generation needs one; `logits` works without)")]
    MissingTokenizer(PathBuf),
    /// A tokenizer or config file that cannot be used.
    #[error("{path}: {what}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The model has no chat template but a chat prompt was asked for.
    #[error(
        "{0}: the model has no chat template (tokenizer_config.json chat_template or chat_template.jinja)"
    )]
    NoChatTemplate(PathBuf),
    /// Rendering the chat template failed.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// Tokenizing or detokenizing failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The prompt leaves no room to generate.
    #[error("the prompt has {tokens} tokens but the model's context length is {max}")]
    PromptTooLong {
        /// Prompt tokens.
        tokens: usize,
        /// Context length.
        max: usize,
    },
    /// Invalid sampling settings.
    #[error("{0}")]
    Params(String),
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An end-of-sequence token.
    Eos,
    /// A stop string appeared in the text.
    StopString,
    /// `max_new_tokens` reached.
    MaxTokens,
    /// The model's context length reached.
    ContextLength,
    /// The caller's text callback asked to stop.
    Caller,
}

/// Timings measured around the model calls.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Prompt length.
    pub prompt_tokens: usize,
    /// Generated tokens (including a final EOS).
    pub generated_tokens: usize,
    /// From the start of prefill to the first sampled token.
    pub ttft_ms: f64,
    /// Prompt tokens per second of prefill.
    pub prefill_tok_s: f64,
    /// Generated tokens after the first, per second.
    pub decode_tok_s: f64,
    /// Whole call.
    pub total_ms: f64,
}

/// Everything about one generation.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// Prompt ids.
    pub prompt_tokens: Vec<u32>,
    /// Generated ids.
    pub tokens: Vec<u32>,
    /// Generated text (special tokens skipped; cut before a stop string).
    pub text: String,
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Measured times.
    pub timings: Timings,
}

/// Generation settings.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// Upper bound on generated tokens.
    pub max_new_tokens: usize,
    /// Token selection.
    pub sampling: SamplingParams,
    /// Stop when any of these appears in the text.
    pub stop: Vec<String>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_new_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
        }
    }
}

/// End-of-turn tokens of common chat templates (llama.cpp's `llama-vocab.cpp` treats these as
/// end of generation).
const END_OF_TURN: &[&str] = &["<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>"];

/// A model with its tokenizer and chat template.
#[derive(Debug)]
pub struct Generator {
    dir: PathBuf,
    model: Model,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    eos: Vec<u32>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// The id the tokenizer puts before plain text, if it adds one.
    added_bos: Option<u32>,
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>, GenerateError> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| GenerateError::BadFile {
                path: path.to_path_buf(),
                what: format!("invalid JSON: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(GenerateError::BadFile {
            path: path.to_path_buf(),
            what: e.to_string(),
        }),
    }
}

/// A token named in tokenizer_config.json: a string or an AddedToken object with `content`.
fn token_text(v: &serde_json::Value) -> Option<String> {
    v.as_str()
        .map(String::from)
        .or_else(|| v.get("content").and_then(|c| c.as_str()).map(String::from))
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
}

/// The chat template source of a model directory: `chat_template.jinja`, else
/// `tokenizer_config.json`'s `chat_template` (a string, or the list entry named `default`).
fn chat_template_source(dir: &Path, tc: &serde_json::Value) -> Option<String> {
    match std::fs::read_to_string(dir.join("chat_template.jinja")) {
        Ok(t) => Some(t),
        Err(_) => match tc.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template").and_then(|s| s.as_str()).map(String::from)),
            _ => None,
        },
    }
}

/// A model directory's chat template with the BOS and EOS texts its tokenizer config names
/// (what [`Generator::render_chat`] uses), without loading the model; `None` when it has none.
pub fn load_chat_template(
    dir: &Path,
) -> Result<Option<(ChatTemplate, RenderOptions)>, GenerateError> {
    let tc = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
    let Some(src) = chat_template_source(dir, &tc) else {
        return Ok(None);
    };
    let opts = RenderOptions {
        bos_token: tc.get("bos_token").and_then(token_text),
        eos_token: tc.get("eos_token").and_then(token_text),
        ..RenderOptions::default()
    };
    Ok(Some((ChatTemplate::new(&src)?, opts)))
}

impl Generator {
    /// Load a model directory onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, GenerateError> {
        Self::load_with(dir, device, Default::default())
    }

    /// [`Generator::load`] with the model's load options (head storage, KV cache storage, ...).
    pub fn load_with(
        dir: &Path,
        device: &Device,
        opts: smolbit_model::LoadOptions,
    ) -> Result<Self, GenerateError> {
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            if !dir.is_dir() {
                // Let the model loader give its own error for a missing directory.
                Model::load(dir, device)?;
            }
            return Err(GenerateError::MissingTokenizer(dir.to_path_buf()));
        }
        let tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| GenerateError::BadFile {
            path: tok_path.clone(),
            what: e.to_string(),
        })?;
        let model = Model::load_with(dir, device, opts)?;
        let tc = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
        let template_src = chat_template_source(dir, &tc);
        let template = template_src.as_deref().map(ChatTemplate::new).transpose()?;
        let mut eos = model.config().eos_token_ids.clone();
        if let Some(gc) = read_json(&dir.join("generation_config.json"))?
            && let Some(v) = gc.get("eos_token_id")
        {
            for id in ids_of(v) {
                if !eos.contains(&id) {
                    eos.push(id);
                }
            }
        }
        let eos_token = tc.get("eos_token").and_then(token_text);
        if let Some(id) = eos_token.as_deref().and_then(|t| tokenizer.token_to_id(t))
            && !eos.contains(&id)
        {
            eos.push(id);
        }
        // The end-of-turn token the chat template closes turns with ends a generation too (as
        // llama.cpp's end-of-generation set): 2B4T's config names only <|end_of_text|>.
        for t in END_OF_TURN {
            if let (Some(src), Some(id)) = (&template_src, tokenizer.token_to_id(t))
                && src.contains(t)
                && !eos.contains(&id)
            {
                eos.push(id);
            }
        }
        let added_bos = match (tokenizer.encode("a", true), tokenizer.encode("a", false)) {
            (Ok(with), Ok(without))
                if with.get_ids().len() == without.get_ids().len() + 1
                    && with.get_ids()[1..] == *without.get_ids() =>
            {
                Some(with.get_ids()[0])
            }
            _ => None,
        };
        Ok(Generator {
            dir: dir.to_path_buf(),
            model,
            tokenizer,
            template,
            added_bos,
            eos,
            bos_token: tc.get("bos_token").and_then(token_text),
            eos_token,
        })
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// End-of-sequence ids.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// Whether the model has a chat template.
    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// Render a conversation with the model's chat template.
    pub fn render_chat(
        &self,
        messages: &[Message],
        opts: &RenderOptions,
    ) -> Result<String, GenerateError> {
        let t = self
            .template
            .as_ref()
            .ok_or_else(|| GenerateError::NoChatTemplate(self.dir.clone()))?;
        let mut opts = opts.clone();
        opts.bos_token = opts.bos_token.or_else(|| self.bos_token.clone());
        opts.eos_token = opts.eos_token.or_else(|| self.eos_token.clone());
        Ok(t.render(messages, &opts)?)
    }

    /// Token ids of a text. Chat prompts (already holding their special tokens) use
    /// `add_special_tokens = false`, as `apply_chat_template(tokenize=True)` does.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, GenerateError> {
        self.tokenizer
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| GenerateError::Tokenizer(e.to_string()))
    }

    /// The ids of a chat prompt ending with the assistant header.
    pub fn chat_prompt(
        &self,
        messages: &[Message],
        enable_thinking: Option<bool>,
    ) -> Result<Vec<u32>, GenerateError> {
        let opts = RenderOptions {
            add_generation_prompt: true,
            enable_thinking,
            ..RenderOptions::default()
        };
        let text = self.render_chat(messages, &opts)?;
        let mut ids = self.encode(&text, false)?;
        // The tokenizer's BOS when it adds one to plain text and the template did not put it
        // there, as the model cards' `tokenizer(apply_chat_template(..., tokenize=False))` and
        // llama.cpp (`add_bos_token`) both do: BitNet b1.58 2B4T's template has no BOS.
        if let Some(bos) = self.added_bos
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Generate after `prompt`, passing each piece of text to `on_text` as soon as it is final.
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation, GenerateError> {
        self.generate_until(prompt, params, &mut |t| {
            on_text(t);
            true
        })
    }

    /// [`Generator::generate`] where `on_text` returns whether to go on: `false` stops after that
    /// piece of text ([`StopReason::Caller`]).
    pub fn generate_until(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation, GenerateError> {
        let mut seq = self.start(prompt, params)?;
        while let Some(chunk) = self.step(&mut seq)? {
            if !chunk.is_empty() && !on_text(&chunk) {
                seq.cancel();
            }
        }
        let (generation, rest) = self.finish(seq)?;
        if !rest.is_empty() {
            on_text(&rest);
        }
        Ok(generation)
    }

    /// A generation after `prompt` that has not run yet: [`Generator::step`] advances it one
    /// token at a time (so a server can interleave several), [`Generator::finish`] ends it.
    /// Checks the settings and the prompt's length against the context.
    pub fn start(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
    ) -> Result<Sequence, GenerateError> {
        params.sampling.validate().map_err(GenerateError::Params)?;
        let max_ctx = self.model.config().max_position_embeddings;
        if prompt.is_empty() {
            return Err(GenerateError::Model(ModelError::Empty));
        }
        if prompt.len() >= max_ctx {
            return Err(GenerateError::PromptTooLong {
                tokens: prompt.len(),
                max: max_ctx,
            });
        }
        Ok(Sequence {
            sampler: Sampler::new(params.sampling.clone()),
            stream: TextStream::new(params.stop.clone()),
            max_new_tokens: params.max_new_tokens,
            history: prompt.to_vec(),
            prompt_len: prompt.len(),
            tokens: Vec::new(),
            cache: self.model.new_cache(),
            start: Instant::now(),
            first_token_at: None,
            stop: None,
        })
    }

    /// Advance `seq` by one token (the first call runs the prompt through the model first).
    /// Returns the text that became final with it (possibly empty), or `None` once the sequence
    /// has ended; then call [`Generator::finish`].
    pub fn step(&self, seq: &mut Sequence) -> Result<Option<String>, GenerateError> {
        if !self.wants_step(seq) {
            return Ok(None);
        }
        // The prompt on the first step, then the previous token.
        let input: &[u32] = match seq.tokens.last() {
            None => &seq.history,
            Some(last) => std::slice::from_ref(last),
        };
        if seq.sampler.is_plain_argmax() {
            // Greedy: the model picks the token (on the device, for the fused GPU step).
            let next = self.model.forward_argmax(input, &mut seq.cache)?;
            return self.push_token(seq, next).map(Some);
        }
        let logits = self.model.forward_last(input, &mut seq.cache)?;
        self.advance(seq, logits).map(Some)
    }

    /// [`Generator::step`] for several sequences at once: each one's prompt (on its first step)
    /// or last token, all in one pass ([`Model::forward_last_batch`]: each weight read once for
    /// all of them). One result per sequence, in order. Batched logits may differ from
    /// single-sequence ones in the last bits on float tables (the kernels' multi-token tiles
    /// sum in another order), so a greedy answer can in rare cases differ from an unbatched
    /// run's; the packed ternary and 8-bit kernels give the same bits either way.
    pub fn step_batch(
        &self,
        seqs: &mut [&mut Sequence],
    ) -> Result<Vec<Option<String>>, GenerateError> {
        let mut out: Vec<Option<String>> = vec![None; seqs.len()];
        let mut stepping: Vec<(usize, &mut Sequence)> = seqs
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| self.wants_step(s).then_some((i, &mut **s)))
            .collect();
        if let [(i, seq)] = &mut stepping[..] {
            out[*i] = self.step(seq)?;
        } else if !stepping.is_empty() {
            let logits = {
                // The prompt on the first step, then the previous token.
                let (inputs, mut caches): (Vec<&[u32]>, Vec<&mut smolbit_model::KvCache>) =
                    stepping
                        .iter_mut()
                        .map(|(_, s)| {
                            let input: &[u32] = match s.tokens.last() {
                                None => &s.history,
                                Some(last) => std::slice::from_ref(last),
                            };
                            (input, &mut s.cache)
                        })
                        .unzip();
                self.model.forward_last_batch(&inputs, &mut caches)?
            };
            // Each sequence's pick (the argmax or a draw over the vocabulary) and its text, the
            // sequences in parallel.
            use rayon::prelude::*;
            let picked: Vec<(usize, Result<String, GenerateError>)> = stepping
                .into_par_iter()
                .zip(logits)
                .map(|((i, s), l)| (i, self.advance(s, l)))
                .collect();
            for (i, r) in picked {
                out[i] = Some(r?);
            }
        }
        Ok(out)
    }

    /// Whether `seq` takes another step (it has not ended and has room for a token); marks it
    /// ended at its token limit.
    fn wants_step(&self, seq: &mut Sequence) -> bool {
        if seq.stop.is_some() {
            return false;
        }
        if seq.tokens.len() >= seq.max_new_tokens {
            seq.stop = Some(StopReason::MaxTokens);
            return false;
        }
        true
    }

    /// Pick the next token from `logits` and apply the stop rules.
    fn advance(&self, seq: &mut Sequence, mut logits: Vec<f32>) -> Result<String, GenerateError> {
        let next = seq.sampler.next(&mut logits, &seq.history);
        self.push_token(seq, next)
    }

    /// Append `next` to `seq` and apply the stop rules.
    fn push_token(&self, seq: &mut Sequence, next: u32) -> Result<String, GenerateError> {
        if seq.first_token_at.is_none() {
            seq.first_token_at = Some(Instant::now());
        }
        seq.tokens.push(next);
        seq.history.push(next);
        if self.eos.contains(&next) {
            seq.stop = Some(StopReason::Eos);
            return Ok(String::new());
        }
        let chunk = seq
            .stream
            .push(&self.tokenizer, next)
            .map_err(GenerateError::Tokenizer)?;
        if seq.stream.stopped() {
            seq.stop = Some(StopReason::StopString);
        } else if seq.tokens.len() == seq.max_new_tokens {
            seq.stop = Some(StopReason::MaxTokens);
        } else if seq.history.len() >= self.model.config().max_position_embeddings {
            seq.stop = Some(StopReason::ContextLength);
        }
        Ok(chunk)
    }

    /// End `seq`: the generation, and the text still held back (an incomplete UTF-8 sequence
    /// or a possible stop string's prefix), not yet returned by [`Generator::step`].
    pub fn finish(&self, mut seq: Sequence) -> Result<(Generation, String), GenerateError> {
        let rest = seq
            .stream
            .finish(&self.tokenizer)
            .map_err(GenerateError::Tokenizer)?;
        let mut stop_reason = seq.stop.unwrap_or(StopReason::MaxTokens);
        if seq.stream.stopped() {
            stop_reason = StopReason::StopString;
        }
        let end = Instant::now();
        let first = seq.first_token_at.unwrap_or(end);
        let ttft = first.duration_since(seq.start).as_secs_f64();
        let decode_s = end.duration_since(first).as_secs_f64();
        let n = seq.tokens.len();
        let timings = Timings {
            prompt_tokens: seq.prompt_len,
            generated_tokens: n,
            ttft_ms: ttft * 1e3,
            prefill_tok_s: if ttft > 0.0 {
                seq.prompt_len as f64 / ttft
            } else {
                0.0
            },
            decode_tok_s: if n > 1 && decode_s > 0.0 {
                (n - 1) as f64 / decode_s
            } else {
                0.0
            },
            total_ms: end.duration_since(seq.start).as_secs_f64() * 1e3,
        };
        let text = seq.stream.text().to_string();
        seq.history.truncate(seq.prompt_len);
        Ok((
            Generation {
                prompt_tokens: seq.history,
                tokens: seq.tokens,
                text,
                stop_reason,
                timings,
            },
            rest,
        ))
    }
}

/// One generation in progress ([`Generator::start`]): its sampler, text stream, tokens and KV
/// cache.
#[derive(Debug)]
pub struct Sequence {
    sampler: Sampler,
    stream: TextStream,
    max_new_tokens: usize,
    /// The prompt, then the generated tokens.
    history: Vec<u32>,
    prompt_len: usize,
    tokens: Vec<u32>,
    cache: smolbit_model::KvCache,
    start: Instant,
    first_token_at: Option<Instant>,
    stop: Option<StopReason>,
}

impl Sequence {
    /// Stop after the current token ([`StopReason::Caller`]): the caller has what it wanted,
    /// or a client went away. (A stop string that completed with that token still wins.)
    pub fn cancel(&mut self) {
        self.stop = Some(StopReason::Caller);
    }

    /// The prompt's length in tokens.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_len
    }

    /// Tokens generated so far.
    pub fn generated_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Why it ended, once it has.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop
    }

    /// When the first token was sampled, if it has been.
    pub fn first_token_at(&self) -> Option<Instant> {
        self.first_token_at
    }
}
