//! `smolbit bench`: prefill and decode speed, time to first token and peak memory of a model on
//! a synthetic prompt (no tokenizer needed, so random-weight checkpoints work), medians over
//! repeats.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use serde_json::json;

/// Settings of one benchmark.
pub struct BenchArgs<'a> {
    pub model: &'a Path,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub repeats: usize,
    /// Sequences decoded together ([`smolbit_model::Model::forward_last_batch`]).
    pub batch: usize,
    pub device: &'a str,
    pub head: smolbit_model::HeadPolicy,
    pub kv_cache: smolbit_model::KvStorage,
    pub linears: smolbit_model::LinearPolicy,
    pub json: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Run the benchmark and print the figures (with `json`, the last line is one JSON object).
pub fn bench(a: &BenchArgs) -> Result<()> {
    let dev = smolbit_model::device(a.device)?;
    let start = Instant::now();
    let opts = smolbit_model::LoadOptions {
        head: a.head,
        kv_cache: a.kv_cache,
        linears: a.linears,
        ..Default::default()
    };
    let model = smolbit_model::Model::load_with(a.model, &dev, opts)?;
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let vocab = model.config().vocab_size;
    let batch = a.batch.max(1);
    // One prompt per sequence, each its own (shifted) run of ids.
    let prompts: Vec<Vec<u32>> = (0..batch as u64)
        .map(|s| {
            (0..a.prompt_tokens.max(1) as u64)
                .map(|i| ((i * 7919 + 13 + s * 104_729) % vocab as u64) as u32)
                .collect()
        })
        .collect();
    let (mut prefill, mut decode, mut ttft) = (Vec::new(), Vec::new(), Vec::new());
    // Launches and device reads of the fused GPU decode steps over the timed runs.
    let (mut launches, mut reads, mut steps) = (0u64, 0u64, 0u64);
    // One warm-up run (allocator, page faults of mapped weights, backend caches), not counted.
    for rep in 0..=a.repeats.max(1) {
        let mut caches: Vec<_> = (0..batch).map(|_| model.new_cache()).collect();
        let t0 = Instant::now();
        // Greedy: the argmax on the device where the fused GPU step runs.
        let mut next = vec![model.forward_argmax(&prompts[0], &mut caches[0])?];
        let first = t0.elapsed().as_secs_f64();
        // The other sequences' prompts, one at a time (untimed: only the decode steps count).
        for (p, c) in prompts.iter().zip(&mut caches).skip(1) {
            next.push(model.forward_argmax(p, c)?);
        }
        let t1 = Instant::now();
        let before = model.gpu_counters();
        for _ in 1..a.new_tokens {
            if batch == 1 {
                next[0] = model.forward_argmax(&next[..1], &mut caches[0])?;
            } else {
                let mut refs: Vec<_> = caches.iter_mut().collect();
                let inputs: Vec<&[u32]> = next.iter().map(std::slice::from_ref).collect();
                let logits = model.forward_last_batch(&inputs, &mut refs)?;
                // The picks in parallel, as `smolbit serve`'s batches take them.
                use rayon::prelude::*;
                next.par_iter_mut()
                    .zip(&logits)
                    .for_each(|(n, l)| *n = smolbit_model::argmax(l) as u32);
            }
        }
        let t2 = Instant::now();
        if rep == 0 {
            continue;
        }
        if let (Some(b), Some(e)) = (before, model.gpu_counters()) {
            launches += e.0 - b.0;
            reads += e.1 - b.1;
            steps += (batch * a.new_tokens.saturating_sub(1)) as u64;
        }
        ttft.push(first * 1e3);
        prefill.push(a.prompt_tokens.max(1) as f64 / first);
        if a.new_tokens > 1 {
            let tokens = batch * (a.new_tokens - 1);
            decode.push(tokens as f64 / t2.duration_since(t1).as_secs_f64());
        }
    }
    let threads = rayon::current_num_threads();
    let isa = smolbit_ternary::kernels::Isa::detect().name();
    let (p, d, t) = (median(prefill), median(decode), median(ttft));
    // MB of 10^6 bytes, the unit (results files keep MiB).
    let rss = smolbit_eval::run::peak_rss_kib().map(smolbit_eval::kib_to_mb);
    if !a.json {
        println!(
            "{}: prefill {p:.1} tok/s ({} tokens), decode {d:.1} tok/s ({} tokens{}), time to first \
             token {t:.1} ms, peak RSS {}, load {load_ms:.0} ms; medians of {} runs, {threads} \
             threads, kernels {isa}, linears {}, head {}, KV cache {}",
            a.model.display(),
            a.prompt_tokens.max(1),
            a.new_tokens,
            if batch > 1 {
                format!(" each, {batch} sequences together, all counted")
            } else {
                String::new()
            },
            rss.map_or("n/a".into(), |m| format!("{m:.0} MB")),
            a.repeats.max(1),
            model.linear_storage(),
            model.head_storage(),
            model.kv_storage().name(),
        );
        if steps > 0 {
            println!(
                "fused GPU decode: {:.1} launches and {:.1} device reads per token (design: {} \
                 launches)",
                launches as f64 / steps as f64,
                reads as f64 / steps as f64,
                model.decode_launches().unwrap_or(0),
            );
        }
    }
    println!(
        "{}",
        json!({
            "model": a.model.display().to_string(),
            "prefill_tok_s": p,
            "decode_tok_s": d,
            "ttft_ms": t,
            "peak_rss_mb": rss,
            "load_ms": load_ms,
            "decode_bytes": model.decode_bytes(),
            "prompt_tokens": a.prompt_tokens.max(1),
            "batch": batch,
            "new_tokens": a.new_tokens,
            "repeats": a.repeats.max(1),
            "threads": threads,
            "isa": isa,
            "device": a.device,
            "linears": model.linear_storage(),
            "head": model.head_storage(),
            "kv_cache": model.kv_storage().name(),
            // The fused GPU decode step's launches and device-to-host reads per decoded token,
            // as counted and by its design (null where decoding does not take that step).
            "launches_per_token": (steps > 0).then(|| launches as f64 / steps as f64),
            "device_reads_per_token": (steps > 0).then(|| reads as f64 / steps as f64),
            "design_launches_per_token": model.decode_launches(),
        })
    );
    Ok(())
}

/// Physical cores (distinct core ids per package on Linux), else logical CPUs.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return logical;
    };
    let mut seen = std::collections::HashSet::new();
    let (mut phys, mut core) = (None, None);
    for line in info.lines() {
        if let Some(v) = line.strip_prefix("physical id") {
            phys = v.trim_start_matches([' ', '\t', ':']).parse::<u32>().ok();
        } else if let Some(v) = line.strip_prefix("core id") {
            core = v.trim_start_matches([' ', '\t', ':']).parse::<u32>().ok();
        } else if line.trim().is_empty() {
            if let (Some(p), Some(c)) = (phys, core) {
                seen.insert((p, c));
            }
            (phys, core) = (None, None);
        }
    }
    if seen.is_empty() {
        logical
    } else {
        seen.len().min(logical)
    }
}
