//! `smolbit`: the user-facing command line. Each subcommand is a thin layer over a library crate:
//! `convert` and `quantize` (smolbit-weights), `logits` (smolbit-model), `generate`, `chat` and
//! `perplexity` (smolbit-generate), `eval` (smolbit-eval).

mod bench;
mod distill;
mod eval;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use smolbit_weights::safetensors::Dtype;

#[derive(Parser)]
#[command(
    name = "smolbit",
    version,
    about = "Ternary SmolLM models: convert, run, evaluate"
)]
struct Cli {
    /// CPU threads for the model (default: the physical cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a GGUF file or a Hugging Face directory into a normalized HF directory.
    Convert {
        /// A `.gguf` file or a directory with config.json and safetensors weights.
        input: PathBuf,
        /// Output directory (written atomically).
        #[arg(long)]
        out: PathBuf,
        /// Output dtype (default: f32 for GGUF input, the input's dtype for HF input).
        #[arg(long, value_enum)]
        dtype: Option<DtypeArg>,
        /// Replace the output directory if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Write the logits of a token sequence as JSON: last-position logits and per-position top-10.
    Logits {
        /// Model directory (as written by `smolbit convert`).
        #[arg(long)]
        model: PathBuf,
        /// Comma-separated token ids, e.g. `1,2,3`.
        #[arg(long)]
        tokens: String,
        /// Output JSON file.
        #[arg(long)]
        out: PathBuf,
        /// Device: cpu (burn Flex) or, in builds with the wgpu feature, wgpu.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Generate text from a prompt, streaming it as it is produced.
    Generate {
        /// Model directory (with tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// The prompt text.
        #[arg(long)]
        prompt: String,
        /// Format the prompt with the model's chat template (as a user message).
        #[arg(long)]
        chat: bool,
        /// System message (implies --chat).
        #[arg(long)]
        system: Option<String>,
        #[command(flatten)]
        opts: GenOpts,
        /// Print one JSON object instead of streaming text.
        #[arg(long)]
        json: bool,
    },
    /// Quantize a converted model to ternary (see `smolbit-ternary`'s scheme docs).
    Quantize {
        /// Full-precision model directory (as written by `smolbit convert`).
        #[arg(long)]
        model: PathBuf,
        /// Scheme: b158, b158:row, b158:g128, planes2:g64, planes2:g128:cal, planes3:g64, ...
        /// (ternary), or q8 / q4 (int8 / int4 with a step per 32 columns, as Q8_0 / Q4_0)
        #[arg(long)]
        scheme: String,
        /// Output directory (written atomically).
        #[arg(long)]
        out: PathBuf,
        /// Calibration text for `:cal` schemes (also enables the output-error metric).
        #[arg(long)]
        calibration: Option<PathBuf>,
        /// Calibration tokens to use.
        #[arg(long, default_value_t = 4096)]
        calibration_tokens: usize,
        /// Trit packing: base3 (1.6 bits per trit) or 2bit.
        #[arg(long, default_value = "base3")]
        packing: String,
        /// Alternating least-squares iterations (planes schemes).
        #[arg(long, default_value_t = 10)]
        iters: usize,
        /// Replace the output directory if it exists.
        #[arg(long)]
        force: bool,
        /// Also quantize the token embedding and output head (default: keep them in floating point).
        #[arg(long)]
        quantize_embeddings: bool,
        /// Write another format: `hf-bitnet` (transformers' BitNet integration; scheme b158 only).
        #[arg(long)]
        export: Option<String>,
    },
    /// Evaluate models on the coding suite: sandboxed tests, latency, memory, perplexity and KL
    /// against the first model. `smolbit eval merge` combines shards.
    Eval(eval::EvalArgs),
    /// Train a ternary student of a full-precision model by distillation (block-wise, then end to end).
    Distill(Box<distill::DistillArgs>),
    /// Measure prefill and decode speed, time to first token and peak memory (medians).
    Bench {
        /// Model directory (no tokenizer needed).
        #[arg(long)]
        model: PathBuf,
        /// Prompt length in tokens.
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        /// Tokens to generate (the first comes from the prefill).
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        /// Timed runs (after one warm-up run).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Sequences decoded together, one token each per step (`smolbit serve --parallel`'s
        /// batches); decode tok/s is then the sum over them.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
        batch: u32,
        /// Device: cpu or, in builds with the wgpu feature, wgpu.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Storage of the embedding and output head: auto (8-bit for ternary checkpoints on the
        /// CPU), f32, f16, q8 or q4 (4-bit, a step per 32 columns); f16/q8/q4 on the CPU only.
        #[arg(long, default_value = "auto")]
        head: smolbit_model::HeadPolicy,
        /// KV cache storage on the CPU host path: f32 or f16 (half the memory and the bytes
        /// attention reads; other paths keep f32).
        #[arg(long, default_value = "f32")]
        kv_cache: smolbit_model::KvStorage,
        /// Dense linears on the CPU: auto (the checkpoint's f32, f16 or bf16 on the host
        /// kernels), burn (f32 through burn's matmul), or f32, f16, bf16, q8 (int8, a step per 32
        /// columns, as Q8_0) or q4 (4-bit, a step per 32 columns, as Q4_0), converted at load.
        #[arg(long, default_value = "auto")]
        linears: smolbit_model::LinearPolicy,
        /// Print one JSON object as the last line only.
        #[arg(long)]
        json: bool,
    },
    /// Render a Markdown report with SVG charts from a results file.
    Report {
        /// Results written by `smolbit eval` (or `smolbit eval merge`).
        #[arg(long)]
        results: PathBuf,
        /// Output directory: report.md and charts/*.svg.
        #[arg(long)]
        out_dir: PathBuf,
        /// A directory of *.j2 templates replacing the built-in report.md.j2.
        #[arg(long)]
        templates: Option<PathBuf>,
        /// Report title.
        #[arg(long)]
        title: Option<String>,
        /// Target: median time to first token, ms.
        #[arg(long, default_value_t = 200.0)]
        target_latency_ms: f64,
        /// Target: peak RSS, GB.
        #[arg(long, default_value_t = 10.0)]
        target_memory_gb: f64,
        /// Target: syntax-valid fraction of answers, percent.
        #[arg(long, default_value_t = 80.0)]
        target_syntax_valid: f64,
    },
    /// Perplexity of a model on a text; with --reference, KL divergence and top-1 agreement.
    Perplexity {
        /// Model directory.
        #[arg(long)]
        model: PathBuf,
        /// Text file.
        #[arg(long)]
        text: PathBuf,
        /// Reference model directory (e.g. the full-precision parent).
        #[arg(long)]
        reference: Option<PathBuf>,
        /// Window length in tokens.
        #[arg(long, default_value_t = 512)]
        ctx: usize,
        /// Use at most this many tokens of the text (0: all).
        #[arg(long, default_value_t = 0)]
        max_tokens: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Device: cpu or, in builds with the wgpu feature, wgpu.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Dense linears of --model (not the reference): auto, burn, f32, f16, bf16, q8 or q4
        /// (as on `generate`).
        #[arg(long, default_value = "auto")]
        linears: smolbit_model::LinearPolicy,
    },
    /// Serve models over the OpenAI HTTP API (chat and text completions, streamed or not).
    Serve(ServeArgs),
    /// Interactive multi-turn chat in the terminal (`/reset` clears the history, `/exit` quits).
    Chat {
        /// Model directory (with tokenizer.json and a chat template).
        #[arg(long)]
        model: PathBuf,
        /// System message.
        #[arg(long)]
        system: Option<String>,
        #[command(flatten)]
        opts: GenOpts,
    },
}

/// `smolbit serve`.
#[derive(clap::Args)]
struct ServeArgs {
    /// Model directory (repeatable); its directory name is the `model` clients send.
    #[arg(long = "model", required = true)]
    models: Vec<PathBuf>,
    /// Address to listen on (loopback by default; 0.0.0.0 exposes the server to the network).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port; the one chosen is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests generated at once, decoded together as one batch (a token each per round).
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Requests that may wait for a slot; beyond that the server answers 503.
    #[arg(long, default_value_t = 16)]
    queue: usize,
    /// Require `Authorization: Bearer <KEY>` on every request (also from SMOLBIT_API_KEY).
    #[arg(long, env = "SMOLBIT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Device: cpu or, in builds with the wgpu feature, wgpu.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// KV cache storage on the CPU host path: f32 or f16.
    #[arg(long, default_value = "f32")]
    kv_cache: smolbit_model::KvStorage,
    /// Dense linears on the CPU (as on `generate`).
    #[arg(long, default_value = "auto")]
    linears: smolbit_model::LinearPolicy,
}

/// Generation settings shared by `generate` and `chat`.
#[derive(clap::Args)]
struct GenOpts {
    /// Upper bound on generated tokens.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep the k most likely tokens (0: off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling threshold (1: off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Drop tokens below min-p times the best token's probability (0: off).
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Penalty for tokens already in the sequence (1: off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when this string appears (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// For reasoning models (SmolLM3): answer without a thinking section.
    #[arg(long)]
    no_think: bool,
    /// Device: cpu or, in builds with the wgpu feature, wgpu.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// KV cache storage on the CPU host path: f32 or f16 (half the memory and the bytes
    /// attention reads, for long conversations; other paths keep f32).
    #[arg(long, default_value = "f32")]
    kv_cache: smolbit_model::KvStorage,
    /// Dense linears on the CPU: auto (the checkpoint's f32, f16 or bf16 on the host
    /// kernels), burn (f32 through burn's matmul), or f32, f16, bf16, q8 (int8, a step per 32
    /// columns, as Q8_0) or q4 (4-bit, a step per 32 columns, as Q4_0), converted at load.
    #[arg(long, default_value = "auto")]
    linears: smolbit_model::LinearPolicy,
}

impl GenOpts {
    fn params(&self) -> smolbit_generate::GenerateParams {
        smolbit_generate::GenerateParams {
            max_new_tokens: self.max_new_tokens,
            sampling: smolbit_generate::SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repetition_penalty: self.repetition_penalty,
                seed: self.seed,
            },
            stop: self.stop.clone(),
        }
    }

    fn thinking(&self) -> Option<bool> {
        self.no_think.then_some(false)
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    F32,
    F16,
    Bf16,
}

impl From<DtypeArg> for Dtype {
    fn from(d: DtypeArg) -> Self {
        match d {
            DtypeArg::F32 => Dtype::F32,
            DtypeArg::F16 => Dtype::F16,
            DtypeArg::Bf16 => Dtype::BF16,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let threads = cli.threads.unwrap_or_else(bench::physical_cores).max(1);
    // The one persistent pool used by burn's CPU backend and the ternary kernels.
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("cannot start the thread pool")?;
    // Run the command on one of the pool's threads: parallel work started from a pool thread
    // runs partly on that thread and joins by work stealing, instead of the caller parking on a
    // futex and a pool thread waking for every product (measured: a quarter of decode time in
    // futex and yield system calls on two cores).
    rayon::scope(|_| dispatch(cli))
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Convert {
            input,
            out,
            dtype,
            force,
        } => convert(&input, &out, dtype.map(Dtype::from), force),
        Command::Logits {
            model,
            tokens,
            out,
            device,
        } => logits(&model, &tokens, &out, &device),
        Command::Generate {
            model,
            prompt,
            chat,
            system,
            opts,
            json,
        } => generate(&model, &prompt, chat, system.as_deref(), &opts, json),
        Command::Chat {
            model,
            system,
            opts,
        } => chat(&model, system.as_deref(), &opts),
        Command::Serve(args) => serve(&args),
        Command::Quantize {
            model,
            scheme,
            out,
            calibration,
            calibration_tokens,
            packing,
            iters,
            force,
            export,
            quantize_embeddings,
        } => match export.as_deref() {
            None => quantize(
                quantize_embeddings,
                &model,
                &scheme,
                &out,
                calibration.as_deref(),
                calibration_tokens,
                &packing,
                iters,
                force,
            ),
            Some("hf-bitnet") => export_hf_bitnet(&model, &scheme, &out, force),
            Some(other) => bail!("--export: unknown format '{other}' (supported: hf-bitnet)"),
        },
        Command::Eval(args) => eval::eval(args),
        Command::Distill(args) => distill::distill(*args),
        Command::Bench {
            model,
            prompt_tokens,
            new_tokens,
            repeats,
            batch,
            device,
            head,
            kv_cache,
            linears,
            json,
        } => bench::bench(&bench::BenchArgs {
            model: &model,
            prompt_tokens,
            new_tokens,
            repeats,
            batch: batch as usize,
            device: &device,
            head,
            kv_cache,
            linears,
            json,
        }),
        Command::Report {
            results,
            out_dir,
            templates,
            title,
            target_latency_ms,
            target_memory_gb,
            target_syntax_valid,
        } => {
            let r = smolbit_eval::results::Results::read(&results)?;
            let opts = smolbit_report::ReportOptions {
                title,
                targets: smolbit_report::Targets {
                    latency_ms: target_latency_ms,
                    memory_gb: target_memory_gb,
                    syntax_valid: target_syntax_valid / 100.0,
                },
                templates,
                reproduce: vec![],
                samples: None,
            };
            smolbit_report::write_report(&out_dir, &r, &opts)?;
            eprintln!("wrote {}", out_dir.join("report.md").display());
            Ok(())
        }
        Command::Perplexity {
            model,
            text,
            reference,
            ctx,
            max_tokens,
            json,
            device,
            linears,
        } => perplexity(
            &model,
            &text,
            reference.as_deref(),
            ctx,
            max_tokens,
            json,
            &device,
            linears,
        ),
    }
}

fn serve(args: &ServeArgs) -> Result<()> {
    let device = smolbit_model::device(&args.device)?;
    let mut models = Vec::new();
    for dir in &args.models {
        let id = dir
            .canonicalize()
            .with_context(|| format!("{}: cannot open", dir.display()))?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let load = smolbit_model::LoadOptions {
            kv_cache: args.kv_cache,
            linears: args.linears,
            ..Default::default()
        };
        let generator = smolbit_generate::Generator::load_with(dir, &device, load)?;
        eprintln!("[serve] loaded {} as '{id}'", dir.display());
        models.push(smolbit_serve::ServedModel { id, generator });
    }
    let opts = smolbit_serve::ServeOptions {
        host: args.host.clone(),
        port: args.port,
        parallel: args.parallel,
        queue: args.queue,
        api_key: args.api_key.clone(),
        ..Default::default()
    };
    smolbit_serve::serve(&opts, models, |addr| {
        eprintln!("[serve] listening on http://{addr}");
    })?;
    Ok(())
}

fn load_generator(model: &Path, opts: &GenOpts) -> Result<smolbit_generate::Generator> {
    let device = smolbit_model::device(&opts.device)?;
    let load = smolbit_model::LoadOptions {
        kv_cache: opts.kv_cache,
        linears: opts.linears,
        ..Default::default()
    };
    Ok(smolbit_generate::Generator::load_with(
        model, &device, load,
    )?)
}

fn generate(
    model: &Path,
    prompt: &str,
    chat: bool,
    system: Option<&str>,
    opts: &GenOpts,
    json: bool,
) -> Result<()> {
    use std::io::Write;
    let g = load_generator(model, opts)?;
    let ids = if chat || system.is_some() {
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(smolbit_generate::Message::new("system", s));
        }
        messages.push(smolbit_generate::Message::new("user", prompt));
        g.chat_prompt(&messages, opts.thinking())?
    } else {
        g.encode(prompt, true)?
    };
    let stdout = std::io::stdout();
    let out = if json {
        g.generate(&ids, &opts.params(), &mut |_| {})?
    } else {
        let mut lock = stdout.lock();
        let out = g.generate(&ids, &opts.params(), &mut |t| {
            let _ = lock.write_all(t.as_bytes());
            let _ = lock.flush();
        })?;
        let _ = writeln!(lock);
        out
    };
    let t = &out.timings;
    if json {
        let doc = json!({
            "prompt_tokens": out.prompt_tokens,
            "tokens": out.tokens,
            "text": out.text,
            "stop_reason": out.stop_reason,
            "ttft_ms": t.ttft_ms,
            "prefill_tok_s": t.prefill_tok_s,
            "decode_tok_s": t.decode_tok_s,
            "total_ms": t.total_ms,
        });
        println!("{doc}");
    } else {
        eprintln!(
            "[{} prompt + {} generated tokens, ttft {:.0} ms, {:.1} tok/s decode, stop: {}]",
            t.prompt_tokens,
            t.generated_tokens,
            t.ttft_ms,
            t.decode_tok_s,
            serde_json::to_value(out.stop_reason)?
                .as_str()
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn chat(model: &Path, system: Option<&str>, opts: &GenOpts) -> Result<()> {
    use std::io::{BufRead, Write};
    let g = load_generator(model, opts)?;
    let mut history: Vec<smolbit_generate::Message> = Vec::new();
    let reset = |h: &mut Vec<smolbit_generate::Message>| {
        h.clear();
        if let Some(s) = system {
            h.push(smolbit_generate::Message::new("system", s));
        }
    };
    reset(&mut history);
    eprintln!(
        "chatting with {} (/reset clears the history, /exit or Ctrl-D quits)",
        model.display()
    );
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        print!("> ");
        stdout.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            println!();
            return Ok(());
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                reset(&mut history);
                eprintln!("[history cleared]");
                continue;
            }
            _ => {}
        }
        history.push(smolbit_generate::Message::new("user", line));
        let ids = g.chat_prompt(&history, opts.thinking())?;
        let result = g.generate(&ids, &opts.params(), &mut |t| {
            print!("{t}");
            let _ = std::io::stdout().flush();
        });
        println!();
        match result {
            Ok(out) => {
                history.push(smolbit_generate::Message::new("assistant", &out.text));
                eprintln!(
                    "[{} tokens, {:.1} tok/s]",
                    out.timings.generated_tokens, out.timings.decode_tok_s
                );
            }
            Err(e) => {
                history.pop();
                eprintln!("error: {e:#} (try /reset)");
            }
        }
    }
}

fn convert(input: &Path, out: &Path, dtype: Option<Dtype>, force: bool) -> Result<()> {
    let opts = smolbit_weights::ConvertOptions {
        dtype,
        overwrite: force,
    };
    let r = smolbit_weights::convert(input, out, &opts)?;
    let c = &r.config;
    println!(
        "converted {} -> {}: {} {} layers, hidden {}, {} heads ({} kv), vocab {}, {} tensors, {:.1} MB {}",
        input.display(),
        out.display(),
        c.arch.model_type(),
        c.num_layers,
        c.hidden_size,
        c.num_heads,
        c.num_kv_heads,
        c.vocab_size,
        r.tensors_written,
        r.bytes as f64 / 1e6,
        r.dtype.name(),
    );
    if let Some(t) = &r.ternary {
        println!("natively ternary: projections kept as trits ({t})");
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    if !r.leftover.is_empty() {
        println!("unused input tensors: {}", r.leftover.join(", "));
    }
    if !r.tokenizer {
        println!(
            "note: no tokenizer in the input; `logits` works, text generation will need tokenizer.json"
        );
    }
    Ok(())
}

fn parse_tokens(s: &str) -> Result<Vec<u32>> {
    let ids = s
        .split(',')
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .with_context(|| format!("--tokens: '{t}' is not a token id"))
        })
        .collect::<Result<Vec<_>>>()?;
    if ids.is_empty() {
        bail!("--tokens: no token ids given");
    }
    Ok(ids)
}

fn logits(model_dir: &Path, tokens: &str, out: &Path, device: &str) -> Result<()> {
    let tokens = parse_tokens(tokens)?;
    let device = smolbit_model::device(device)?;
    let model = smolbit_model::Model::load(model_dir, &device)?;
    let mut cache = model.new_cache();
    let logits = model.forward(&tokens, &mut cache)?;
    let vocab = model.config().vocab_size;
    let flat = smolbit_model::tensor_to_vec(logits);
    let top10: Vec<Vec<usize>> = flat
        .chunks(vocab)
        .map(|row| smolbit_model::top_k(row, 10))
        .collect();
    let last = &flat[flat.len() - vocab..];
    let doc = json!({"tokens": tokens, "last_logits": last, "top10": top10});
    let tmp = out.with_extension("json.partial");
    std::fs::write(&tmp, serde_json::to_string(&doc)? + "\n")
        .with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("{}: cannot write", out.display()))?;
    Ok(())
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))
}

#[allow(clippy::too_many_arguments)]
fn quantize(
    quantize_embeddings: bool,
    model: &Path,
    scheme: &str,
    out: &Path,
    calibration: Option<&Path>,
    calibration_tokens: usize,
    packing: &str,
    iters: usize,
    force: bool,
) -> Result<()> {
    use smolbit_ternary::pack::Packing;
    if let Some(format) = smolbit_weights::blocked::BlockedFormat::from_scheme(scheme) {
        if calibration.is_some() || quantize_embeddings {
            bail!(
                "--scheme {scheme}: the 8- and 4-bit formats take no --calibration or \
                 --quantize-embeddings"
            );
        }
        let r = smolbit_weights::blocked::quantize_blocked(model, out, format, force)?;
        println!(
            "quantized {} -> {}: {}, {} layers, {:.2} bits per weight, weight error {:.4}, {:.1} MB",
            model.display(),
            out.display(),
            r.scheme,
            r.layers.len(),
            r.bits_per_weight,
            r.model_weight_rel_error,
            r.bytes as f64 / 1e6
        );
        return Ok(());
    }
    let scheme: smolbit_ternary::Scheme = scheme.parse()?;
    let packing = Packing::from_name(packing)
        .with_context(|| format!("--packing: '{packing}' is not base3 or 2bit"))?;
    let calibration = match calibration {
        Some(path) => {
            let text = read_text(path)?;
            let g = smolbit_generate::Generator::load(model, &smolbit_model::device("cpu")?)?;
            let mut ids = g.encode(&text, false)?;
            ids.truncate(calibration_tokens);
            let windows: Vec<Vec<u32>> = ids
                .chunks(512)
                .filter(|w| w.len() >= 2)
                .map(<[u32]>::to_vec)
                .collect();
            eprintln!("calibrating on {} tokens of {}", ids.len(), path.display());
            Some(g.model().calibrate(&windows, 128, scheme.gptq)?)
        }
        None => None,
    };
    let opts = smolbit_weights::quantize::QuantizeOptions {
        scheme,
        packing,
        calibration,
        overwrite: force,
        iters,
        quantize_embeddings,
    };
    let r = smolbit_weights::quantize::quantize_model(model, out, &opts)?;
    let mut worst: Vec<_> = r.layers.iter().collect();
    worst.sort_by(|a, b| b.weight_rel_error.total_cmp(&a.weight_rel_error));
    for l in worst.iter().take(5) {
        let out_err = l
            .output_rel_error
            .map(|e| format!(", output error {e:.3}"))
            .unwrap_or_default();
        println!(
            "  {:<48} weight error {:.3}{out_err}",
            l.name, l.weight_rel_error
        );
    }
    println!(
        "quantized {} -> {}: {} ({}), {} layers, {:.2} bits per weight, weight error {:.3}{}, {:.1} MB",
        model.display(),
        out.display(),
        r.scheme,
        r.packing,
        r.layers.len(),
        r.bits_per_weight,
        r.model_weight_rel_error,
        r.mean_output_rel_error
            .map(|e| format!(", mean output error {e:.3}"))
            .unwrap_or_default(),
        r.bytes as f64 / 1e6
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn perplexity(
    model: &Path,
    text: &Path,
    reference: Option<&Path>,
    ctx: usize,
    max_tokens: usize,
    json: bool,
    device: &str,
    linears: smolbit_model::LinearPolicy,
) -> Result<()> {
    let dev = smolbit_model::device(device)?;
    let opts = smolbit_model::LoadOptions {
        linears,
        ..Default::default()
    };
    let g = smolbit_generate::Generator::load_with(model, &dev, opts)?;
    let mut ids = g.encode(&read_text(text)?, false)?;
    if max_tokens > 0 {
        ids.truncate(max_tokens);
    }
    let reference = reference
        .map(|r| smolbit_model::Model::load(r, &dev))
        .transpose()?;
    let r = smolbit_generate::perplexity::evaluate(g.model(), reference.as_ref(), &ids, ctx)?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        let cmp = match (r.kl_mean, r.top1_agreement, r.reference_perplexity) {
            (Some(kl), Some(a), Some(rp)) => format!(
                ", KL {kl:.4} nats, top-1 agreement {:.1} % (reference perplexity {rp:.3})",
                a * 100.0
            ),
            _ => String::new(),
        };
        println!(
            "perplexity {:.3} over {} predictions ({} windows of {}){cmp}",
            r.perplexity, r.scored, r.windows, r.ctx
        );
    }
    Ok(())
}

fn export_hf_bitnet(model: &Path, scheme: &str, out: &Path, force: bool) -> Result<()> {
    let parsed: smolbit_ternary::Scheme = scheme.parse()?;
    if parsed != "b158".parse::<smolbit_ternary::Scheme>()? {
        bail!(
            "--export hf-bitnet: transformers' BitLinear holds one scale per tensor with int8 activations, i.e. scheme b158 (got {parsed})"
        );
    }
    let r = smolbit_weights::quantize::export_hf_bitnet(model, out, force)?;
    println!(
        "exported {} -> {} in transformers' BitNet format: {} layers, {:.1} MB",
        model.display(),
        out.display(),
        r.layers.len(),
        r.bytes as f64 / 1e6
    );
    Ok(())
}
