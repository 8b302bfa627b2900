//! `cargo xtask bench [--quick] [--llama-bench PATH --gguf FILE ...] [--bitnet-bench PATH
//! --bitnet-gguf FILE ...] [--only FAMILY ...] [--name NAME] [--rounds N]`: the benchmark
//! table. Runs `smolbit bench --json` on each model
//! variant that exists under `models/` (the pipeline's default model and its schemes, and the
//! random SmolLM3-3B- and BitNet-2B4T-shaped checkpoints from `cargo xtask random-model`; a
//! directory holding a `.no-bench` file is skipped), at 1 and 2 threads, then llama.cpp's
//! `llama-bench` on each `--gguf` and bitnet.cpp's on each `--bitnet-gguf` (same prompt and
//! generation lengths, peak RSS through `/usr/bin/time`), all in one run on one machine, each
//! model size's rows together; measures memory copy bandwidth for the bandwidth bound; writes
//! `reports/bench/<NAME>.md` and `<NAME>.jsonl` (`bench` by default); `--only` limits the
//! smolbit rows to the named families under `models/`. The peer engines are built outside this
//! repository (`../shared/notes/peer-engines.md`).
//!
//! `cargo xtask bench --long-context [--llama-bench PATH --gguf FILE ...]` instead measures a
//! long prompt: 1,024 tokens, then 64 decoded from that depth, for every small model's `b158`
//! variant with the f32 and the f16 KV cache, against `llama-bench -p 1024` and
//! `-n 64 -d 1024` on the small GGUFs (names without "3b"); writes
//! `reports/bench/long-context.md` and `.jsonl`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::project_root;

/// Copy bandwidth of `threads` threads each copying its own 256 MiB buffer, median of 5, as
/// bytes copied per second (each byte is read once and written once). This is the convention
/// of the issue's figures ("about 30 GB/s reachable here", llama.cpp TQ2_0 at 58 % of the
/// bound): decode reads its weights once, so bytes moved one way is the comparable rate.
/// Counting read and write bytes (STREAM's convention) doubles it.
fn copy_bandwidth(threads: usize) -> f64 {
    const N: usize = 256 << 20;
    let mut bufs: Vec<(Vec<u8>, Vec<u8>)> =
        (0..threads).map(|_| (vec![1u8; N], vec![0u8; N])).collect();
    (N * threads) as f64
        / median_of_5(|| {
            std::thread::scope(|s| {
                for (src, dst) in bufs.iter_mut() {
                    s.spawn(move || dst.copy_from_slice(src));
                }
            })
        })
}

/// Median wall time of five runs of `f`, in seconds.
fn median_of_5(mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[2]
}

/// Read bandwidth: `threads` threads each reading its own 256 MiB buffer as four interleaved
/// streams (its quarters in lockstep; one sequential stream reached 0.7-0.85 of this here), eight 64-bit sums, median of 5, in bytes read per second. Decode only reads its
/// weights, so this is the rate the bound uses: a memory copy also writes, and llama.cpp's F16
/// decode was seen reading its weights at 1.4 times the copy rate.
fn read_bandwidth(threads: usize) -> f64 {
    const N: usize = 256 << 20;
    let bufs: Vec<Vec<u64>> = (0..threads)
        .map(|i| (0..N / 8).map(|j| (i + j) as u64).collect())
        .collect();
    let read = |b: &[u64]| {
        let q = b.len() / 4 / 8 * 8;
        let part = |k: usize| b[k * q..(k + 1) * q].chunks_exact(8);
        let mut acc = [0u64; 8];
        for (((w, x), y), z) in part(0).zip(part(1)).zip(part(2)).zip(part(3)) {
            for i in 0..8 {
                acc[i] = acc[i]
                    .wrapping_add(w[i])
                    .wrapping_add(x[i])
                    .wrapping_add(y[i])
                    .wrapping_add(z[i]);
            }
        }
        acc.iter().fold(0u64, |a, &v| a.wrapping_add(v))
    };
    (N * threads) as f64
        / median_of_5(|| {
            std::thread::scope(|s| {
                for b in &bufs {
                    s.spawn(move || std::hint::black_box(read(b)));
                }
            })
        })
}

fn weight_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The median of a llama-bench JSON line's `samples_ts`.
fn median_ts(v: &serde_json::Value) -> f64 {
    let mut s: Vec<f64> = v["samples_ts"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
        .unwrap_or_default();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// One llama.cpp case: `llama-bench -p 128 -n <new> -t <threads> -r <repeats> -o jsonl` under
/// `/usr/bin/time` for its peak RSS. Returns (prefill tok/s, decode tok/s, peak RSS in MB of
/// 10^6 bytes, as smolbit's).
fn llama_bench(
    exe: &Path,
    gguf: &Path,
    threads: usize,
    new_tokens: usize,
    repeats: &str,
) -> Result<(f64, f64, f64)> {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "maxrss_kb=%M"])
        .arg(exe)
        .arg("-m")
        .arg(gguf)
        .args(["-p", "128", "-n", &new_tokens.to_string()])
        .args(["-t", &threads.to_string(), "-r", repeats, "-o", "jsonl"])
        .output()
        .with_context(|| format!("cannot run {} under /usr/bin/time", exe.display()))?;
    if !out.status.success() {
        bail!(
            "llama-bench {}: {}",
            gguf.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let (mut prefill, mut decode) = (f64::NAN, f64::NAN);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).context("llama-bench output")?;
        if v["n_gen"].as_u64() == Some(0) {
            prefill = median_ts(&v);
        } else {
            decode = median_ts(&v);
        }
    }
    let rss_kb = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| l.strip_prefix("maxrss_kb="))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .next_back()
        .unwrap_or(f64::NAN);
    Ok((prefill, decode, smolbit_eval::kib_to_mb(rss_kb)))
}

/// `smolbit --threads <threads> bench --json <options...> <lengths...> --model <dir>`: its JSON
/// line.
fn smolbit_bench(
    bin: &Path,
    root: &Path,
    threads: usize,
    options: &[&str],
    lengths: &[&str],
    dir: &Path,
) -> Result<serde_json::Value> {
    let out = Command::new(bin)
        .current_dir(root)
        .args(["--threads", &threads.to_string(), "bench", "--json"])
        .args(options)
        .args(lengths)
        .arg("--model")
        .arg(dir)
        .output()
        .context("cannot run smolbit")?;
    if !out.status.success() {
        bail!(
            "smolbit bench {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("{}")).context("bench output")
}

/// Rows are grouped by model size (names with "3b", "2b", else small), so the rows compared
/// against each other are measured minutes apart.
fn size_class(name: &str) -> u8 {
    if name.contains("3b") {
        2
    } else if name.contains("2b") {
        1
    } else {
        0
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let (mut quick, mut llama, mut ggufs) = (false, None, Vec::new());
    let (mut bitnet, mut bitnet_ggufs) = (None, Vec::new());
    let mut out_name = "bench".to_string();
    let mut rounds = 1usize;
    let mut only: Vec<String> = Vec::new();
    let mut long = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--long-context" => long = true,
            "--llama-bench" => {
                llama = Some(PathBuf::from(
                    it.next().context("--llama-bench needs a path")?,
                ))
            }
            "--gguf" => ggufs.push(PathBuf::from(it.next().context("--gguf needs a file")?)),
            "--bitnet-bench" => {
                bitnet = Some(PathBuf::from(
                    it.next().context("--bitnet-bench needs a path")?,
                ))
            }
            "--name" => out_name = it.next().context("--name needs a value")?.clone(),
            "--rounds" => {
                rounds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .context("--rounds needs a positive count")?
            }
            "--only" => only.push(it.next().context("--only needs a family")?.clone()),
            "--bitnet-gguf" => bitnet_ggufs.push(PathBuf::from(
                it.next().context("--bitnet-gguf needs a file")?,
            )),
            other => bail!("bench: unknown argument '{other}'"),
        }
    }
    if !ggufs.is_empty() && llama.is_none() {
        bail!("bench: --gguf needs --llama-bench <path to llama.cpp's llama-bench>");
    }
    if !bitnet_ggufs.is_empty() && bitnet.is_none() {
        bail!("bench: --bitnet-gguf needs --bitnet-bench <path to bitnet.cpp's llama-bench>");
    }
    for g in ggufs.iter().chain(&bitnet_ggufs) {
        if !g.is_file() {
            bail!("{}: no such GGUF file", g.display());
        }
    }
    let root = project_root();
    let bin = crate::pipeline::build_smolbit()?;
    if long {
        return long_context(&bin, &root, llama.as_deref(), &ggufs);
    }
    let mut cases: Vec<(String, PathBuf, usize, usize, Vec<&str>)> = Vec::new();
    let models = root.join("models");
    for entry in std::fs::read_dir(&models)
        .with_context(|| format!("{}: run the pipeline first", models.display()))?
    {
        let family = entry?.path();
        let Ok(variants) = std::fs::read_dir(&family) else {
            continue;
        };
        let family_name = family.file_name().unwrap_or_default().to_string_lossy();
        if family.join(".no-bench").exists()
            || (!only.is_empty() && !only.iter().any(|o| *o == family_name))
        {
            continue;
        }
        let mut dirs: Vec<PathBuf> = variants
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("config.json").is_file())
            .collect();
        dirs.sort();
        let big = family
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("3b"));
        for d in dirs {
            let name = format!(
                "{}/{}",
                family.file_name().unwrap_or_default().to_string_lossy(),
                d.file_name().unwrap_or_default().to_string_lossy()
            );
            // Floating-point 3B checkpoints run as f32 (12 GB, well under 1 token/s): a few tokens.
            let dense_big = big && !d.join("quantization.json").is_file();
            let new_tokens = if dense_big {
                4
            } else if quick {
                16
            } else {
                64
            };
            // Ternary 3B and 2B checkpoints and the small model's b158 also with the 4-bit head
            // and embedding (`--head q4`).
            let q4_too = (big && !dense_big)
                || size_class(&name) == 1
                || d.file_name().is_some_and(|n| n == "b158");
            // (The int8 and int4 rows are the pipeline's `q8` and `q4` checkpoints.)
            let variants: &[(&str, &[&str])] = if q4_too {
                &[("", &[]), (" (q4 head)", &["--head", "q4"])]
            } else {
                &[("", &[])]
            };
            for &(suffix, options) in variants {
                for threads in [1, 2] {
                    if dense_big && threads == 1 {
                        continue;
                    }
                    let label = format!("{name}{suffix}");
                    cases.push((label, d.clone(), threads, new_tokens, options.to_vec()));
                }
            }
        }
    }
    let out_dir = root.join("reports").join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let (copy1, copy2) = (copy_bandwidth(1), copy_bandwidth(2));
    // Read bandwidth before and after the rows; the bound uses the higher (what the machine
    // reached), as its speed drifts within a run.
    let (bw1, bw2) = (read_bandwidth(1), read_bandwidth(2));
    eprintln!(
        "[bench] read bandwidth: {:.1} GB/s (1 thread), {:.1} GB/s (2 threads); copy: {:.1}, {:.1} GB/s",
        bw1 / 1e9,
        bw2 / 1e9,
        copy1 / 1e9,
        copy2 / 1e9
    );
    // One job per table row. They run grouped by model size, each size's smolbit rows then its
    // llama.cpp rows, so the rows compared against each other are measured minutes apart rather
    // than across the whole run (this machine's speed drifts within a run); the table keeps
    // smolbit rows first.
    enum Job<'a> {
        /// A label, a model directory, threads, new tokens, `smolbit bench` options.
        Smolbit(String, PathBuf, usize, usize, Vec<&'a str>),
        /// An engine's name, its llama-bench, a GGUF, threads.
        Peer(&'static str, PathBuf, PathBuf, usize),
    }
    let mut jobs: Vec<(u8, Job)> = Vec::new();
    for (name, dir, threads, new_tokens, options) in cases {
        jobs.push((
            size_class(&name),
            Job::Smolbit(name, dir, threads, new_tokens, options),
        ));
    }
    for (engine, exe, files) in [
        ("llama.cpp", &llama, &ggufs),
        ("bitnet.cpp", &bitnet, &bitnet_ggufs),
    ] {
        let Some(exe) = exe else { continue };
        for g in files {
            let size = size_class(&g.file_name().unwrap_or_default().to_string_lossy());
            for threads in [1, 2] {
                jobs.push((size, Job::Peer(engine, exe.clone(), g.clone(), threads)));
            }
        }
    }
    // Within a size, rows of one thread count run together, smolbit's and the peers'
    // alternating, so compared rows are measured back to back; with `--rounds N` the whole
    // sequence runs N times and each figure is the median over rounds (this machine's speed
    // drifts by 10-25 % within a run).
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    let threads_of = |j: &Job| match j {
        Job::Smolbit(_, _, t, _, _) | Job::Peer(_, _, _, t) => *t,
    };
    order.sort_by_key(|&i| (jobs[i].0, threads_of(&jobs[i].1)));
    {
        // Interleave engines within each (size, threads) group.
        let mut interleaved = Vec::with_capacity(order.len());
        for key in order
            .iter()
            .map(|&i| (jobs[i].0, threads_of(&jobs[i].1)))
            .collect::<std::collections::BTreeSet<_>>()
        {
            let group: Vec<usize> = order
                .iter()
                .copied()
                .filter(|&i| (jobs[i].0, threads_of(&jobs[i].1)) == key)
                .collect();
            let (ours, peers): (Vec<usize>, Vec<usize>) = group
                .into_iter()
                .partition(|&i| matches!(jobs[i].1, Job::Smolbit(..)));
            for k in 0..ours.len().max(peers.len()) {
                interleaved.extend(ours.get(k));
                interleaved.extend(peers.get(k));
            }
        }
        order = interleaved;
    }
    let mut jsonl = std::fs::File::create(out_dir.join(format!("{out_name}.jsonl")))?;
    /// One measurement of a row.
    #[derive(Clone, Copy)]
    struct Sample {
        prefill: f64,
        decode: f64,
        ttft: f64,
        rss: f64,
    }
    /// A table row: its label, file bytes, bytes read per token, threads, a sample per round.
    #[derive(Clone)]
    struct Row {
        label: String,
        wb: f64,
        per_token: f64,
        threads: usize,
        samples: Vec<Sample>,
    }
    let mut rows: Vec<Option<Row>> = vec![None; jobs.len()];
    for round in 0..rounds {
        for &i in &order {
            let (label, wb, per_token, threads, sample) = match &jobs[i].1 {
                Job::Smolbit(name, dir, threads, new_tokens, options) => {
                    let (name, dir, threads, new_tokens) = (name, dir, *threads, *new_tokens);
                    eprintln!("[bench] round {round}: {name}, {threads} thread(s)");
                    let repeats = if new_tokens <= 4 {
                        "1"
                    } else if quick {
                        "2"
                    } else {
                        "3"
                    };
                    let new = new_tokens.to_string();
                    let mut v = smolbit_bench(
                        &bin,
                        &root,
                        threads,
                        &[&["--repeats", repeats][..], options].concat(),
                        &["--prompt-tokens", "128", "--new-tokens", &new],
                        dir,
                    )?;
                    let wb = weight_bytes(dir);
                    v["weight_bytes"] = serde_json::json!(wb);
                    v["round"] = serde_json::json!(round);
                    // Bytes read per decoded token as loaded (packed linears and head); the
                    // files' size when the binary does not report it.
                    let per_token = v["decode_bytes"].as_u64().unwrap_or(wb);
                    writeln!(jsonl, "{v}")?;
                    let num = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
                    let sample = Sample {
                        prefill: num("prefill_tok_s"),
                        decode: num("decode_tok_s"),
                        ttft: num("ttft_ms"),
                        rss: num("peak_rss_mb"),
                    };
                    (name.clone(), wb, per_token, threads, sample)
                }
                Job::Peer(engine, exe, g, threads) => {
                    let (g, threads) = (g, *threads);
                    let name = format!(
                        "{engine} {}",
                        g.file_name().unwrap_or_default().to_string_lossy()
                    );
                    let wb = std::fs::metadata(g).map_or(0, |m| m.len());
                    // F16 3B files (over 4 GB): 2 threads and 4 tokens only, as the f16/f32 3B
                    // rows.
                    let huge = wb > 4_000_000_000;
                    if huge && threads == 1 {
                        continue;
                    }
                    eprintln!("[bench] round {round}: {name}, {threads} thread(s)");
                    let new_tokens = if huge {
                        4
                    } else if quick {
                        16
                    } else {
                        64
                    };
                    let repeats = if huge {
                        "1"
                    } else if quick {
                        "2"
                    } else {
                        "3"
                    };
                    let (p, d, rss) = llama_bench(exe, g, threads, new_tokens, repeats)?;
                    let v = serde_json::json!({
                        "model": g.display().to_string(), "engine": engine,
                        "prefill_tok_s": p, "decode_tok_s": d, "ttft_ms": 128.0 / p * 1e3,
                        "peak_rss_mb": rss, "weight_bytes": wb, "threads": threads,
                        "prompt_tokens": 128, "new_tokens": new_tokens, "round": round,
                    });
                    writeln!(jsonl, "{v}")?;
                    let sample = Sample {
                        prefill: p,
                        decode: d,
                        ttft: 128.0 / p * 1e3,
                        rss,
                    };
                    (name, wb, wb, threads, sample)
                }
            };
            let row = rows[i].get_or_insert_with(|| Row {
                label,
                wb: wb as f64,
                per_token: per_token as f64,
                threads,
                samples: Vec::new(),
            });
            row.samples.push(sample);
        }
    }
    let median = |mut v: Vec<f64>| -> f64 {
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    };
    let rows: Vec<Option<(String, f64, f64, usize)>> = rows
        .into_iter()
        .map(|r| {
            r.map(|r| {
                let Row {
                    label,
                    wb,
                    per_token,
                    threads,
                    samples,
                } = r;
                let m = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
                let decode = m(|s| s.decode);
                let cols = format!(
                    "| {label} | {threads} | {:.0} | {:.0} | {:.1} | {decode:.1} | {:.0} | {:.0} |",
                    wb / 1e6,
                    per_token / 1e6,
                    m(|s| s.prefill),
                    m(|s| s.ttft),
                    m(|s| s.rss),
                );
                (cols, decode, per_token, threads)
            })
        })
        .collect();
    let (after1, after2) = (read_bandwidth(1), read_bandwidth(2));
    eprintln!(
        "[bench] read bandwidth after: {:.1} GB/s (1 thread), {:.1} GB/s (2 threads)",
        after1 / 1e9,
        after2 / 1e9
    );
    let (bw1, bw2) = (bw1.max(after1), bw2.max(after2));
    // The bound: read bandwidth / bytes read per token.
    let rows: Vec<String> = rows
        .into_iter()
        .flatten()
        .map(|(cols, decode, bytes, threads)| {
            let bw = if threads == 1 { bw1 } else { bw2 };
            format!("{cols} {:.0} % |", 100.0 * decode * bytes / bw)
        })
        .collect();
    let mut md = String::new();
    md.push_str("| model | threads | file (MB) | read per token (MB) | prefill tok/s (128) | decode tok/s | TTFT ms (128-token prompt) | peak RSS (MB) | decode vs bandwidth bound |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        md.push_str(&r);
        md.push('\n');
    }
    md.push_str(&format!(
        "\nMedians (over {rounds} round{} of every row, rows of both engines alternating); read bandwidth {:.1} GB/s (1 thread), {:.1} GB/s (2 threads), the higher of before and after the rows; copy bandwidth {:.1} / {:.1} GB/s (bytes copied per second); bound = read bandwidth / bytes read per token (packed linears and output head as loaded). Produced by `cargo xtask bench{}`.\n",
        if rounds == 1 { "" } else { "s" },
        bw1 / 1e9,
        bw2 / 1e9,
        copy1 / 1e9,
        copy2 / 1e9,
        args.iter().map(|a| format!(" {a}")).collect::<String>()
    ));
    std::fs::write(out_dir.join(format!("{out_name}.md")), &md)?;
    print!("{md}");
    Ok(())
}

/// Prompt tokens of the long-context benchmark, and the depth its decoding starts from.
const LONG_PROMPT: usize = 1024;

/// `cargo xtask bench --long-context` (module docs).
fn long_context(bin: &Path, root: &Path, llama: Option<&Path>, ggufs: &[PathBuf]) -> Result<()> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let models = root.join("models");
    for entry in std::fs::read_dir(&models)
        .with_context(|| format!("{}: run the pipeline first", models.display()))?
    {
        let family = entry?.path();
        let b158 = family.join("b158");
        if !family.to_string_lossy().contains("3b") && b158.join("config.json").is_file() {
            dirs.push(b158);
        }
    }
    dirs.sort();
    let out_dir = root.join("reports").join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let mut jsonl = std::fs::File::create(out_dir.join("long-context.jsonl"))?;
    let mut md = format!(
        "| model | KV cache | threads | prefill tok/s ({LONG_PROMPT}) | decode tok/s (from depth {LONG_PROMPT}) | TTFT ms | peak RSS (MB) |\n|---|---|---|---|---|---|---|\n"
    );
    for dir in &dirs {
        let family = dir
            .parent()
            .and_then(Path::file_name)
            .unwrap_or_default()
            .to_string_lossy();
        for threads in [1, 2] {
            for kv in ["f32", "f16"] {
                eprintln!("[bench] {family}/b158, KV {kv}, {threads} thread(s)");
                let prompt = LONG_PROMPT.to_string();
                let v = smolbit_bench(
                    bin,
                    root,
                    threads,
                    &["--repeats", "2", "--kv-cache", kv],
                    &["--prompt-tokens", &prompt, "--new-tokens", "64"],
                    dir,
                )?;
                writeln!(jsonl, "{v}")?;
                let num = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
                md.push_str(&format!(
                    "| {family}/b158 | {kv} | {threads} | {:.1} | {:.1} | {:.0} | {:.0} |\n",
                    num("prefill_tok_s"),
                    num("decode_tok_s"),
                    num("ttft_ms"),
                    num("peak_rss_mb")
                ));
            }
        }
    }
    if let Some(exe) = llama {
        for g in ggufs {
            let name = g.file_name().unwrap_or_default().to_string_lossy();
            if name.contains("3b") {
                continue;
            }
            for threads in [1, 2] {
                eprintln!("[bench] llama.cpp {name}, {threads} thread(s)");
                let run = |extra: &[&str]| -> Result<f64> {
                    let out = Command::new(exe)
                        .arg("-m")
                        .arg(g)
                        .args(extra)
                        .args(["-t", &threads.to_string(), "-r", "2", "-o", "jsonl"])
                        .output()
                        .with_context(|| format!("cannot run {}", exe.display()))?;
                    if !out.status.success() {
                        bail!(
                            "llama-bench {}: {}",
                            g.display(),
                            String::from_utf8_lossy(&out.stderr).trim()
                        );
                    }
                    let text = String::from_utf8_lossy(&out.stdout);
                    let line = text.lines().next_back().unwrap_or("{}");
                    let v: serde_json::Value =
                        serde_json::from_str(line).context("llama-bench output")?;
                    Ok(median_ts(&v))
                };
                let p = LONG_PROMPT.to_string();
                let prefill = run(&["-p", &p, "-n", "0"])?;
                let decode = run(&["-p", "0", "-n", "64", "-d", &p])?;
                let v = serde_json::json!({
                    "model": g.display().to_string(), "engine": "llama.cpp", "kv_cache": "f16",
                    "prefill_tok_s": prefill, "decode_tok_s": decode,
                    "ttft_ms": LONG_PROMPT as f64 / prefill * 1e3, "threads": threads,
                    "prompt_tokens": LONG_PROMPT, "new_tokens": 64, "depth": LONG_PROMPT,
                });
                writeln!(jsonl, "{v}")?;
                md.push_str(&format!(
                    "| llama.cpp {name} | f16 | {threads} | {prefill:.1} | {decode:.1} | {:.0} | |\n",
                    LONG_PROMPT as f64 / prefill * 1e3
                ));
            }
        }
    }
    md.push_str(&format!(
        "\nMedians of 2 runs (after a warm-up for smolbit). smolbit decodes 64 tokens after the {LONG_PROMPT}-token prompt; llama.cpp's `llama-bench -n 64 -d {LONG_PROMPT}` decodes 64 tokens after filling {LONG_PROMPT} positions (its cache is f16 by default), and `-p {LONG_PROMPT} -n 0` gives its prefill. Produced by `cargo xtask bench --long-context`.\n"
    ));
    std::fs::write(out_dir.join("long-context.md"), &md)?;
    print!("{md}");
    Ok(())
}
