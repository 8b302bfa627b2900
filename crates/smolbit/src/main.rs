//! `smolbit`: the user-facing command line. Each subcommand is a thin layer over a library crate.

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
