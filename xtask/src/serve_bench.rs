//! `cargo xtask serve-bench [--model DIR] [--threads N] [--rounds R]`: `smolbit serve` measured
//! against `smolbit bench` on the same model (default `models/smollm2-135m-instruct-q4_1/b158`,
//! the pipeline's), into `reports/bench/serve.{md,jsonl}`:
//!
//! - time to first token through the server (a streamed `/v1/completions` request whose prompt
//!   is 128 tokens, timed from sending the request to the first chunk with text) against
//!   `smolbit bench --prompt-tokens 128`'s TTFT;
//! - decode throughput of 1 stream and of 4 concurrent streams (`--parallel 4`), each asking for
//!   64 tokens of a different prompt: completion tokens (from `usage`) per second of wall time,
//!   from the first request sent to the last response read.
//!
//! Medians of `--rounds` (default 3). The client is a minimal HTTP/1.1 one over loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::project_root;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(bin: &Path, model: &Path, threads: usize, parallel: usize) -> Result<(Server, String)> {
    let mut child = Command::new(bin)
        .args(["--threads", &threads.to_string(), "serve", "--port", "0"])
        .args(["--parallel", &parallel.to_string(), "--model"])
        .arg(model)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start smolbit serve")?;
    let stderr = child.stderr.take().context("stderr")?;
    let server = Server(child);
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .context("smolbit serve exited before listening")??;
        if let Some(a) = line.strip_prefix("[serve] listening on http://") {
            break a.to_string();
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok((server, addr))
}

/// POST a JSON body; the raw response bytes, and when the first chunk carrying text arrived
/// (for streamed responses).
fn post(addr: &str, path: &str, body: &Value) -> Result<(Vec<u8>, Option<Instant>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(600)))?;
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let mut first_text = None;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if first_text.is_none() && String::from_utf8_lossy(&out).contains("\"text\":\"") {
            let text = String::from_utf8_lossy(&out);
            // A chunk whose text is not empty.
            if text.split("data: ").any(|e| {
                serde_json::from_str::<Value>(e.split("\r\n").next().unwrap_or("").trim())
                    .ok()
                    .and_then(|v| v["choices"][0]["text"].as_str().map(|t| !t.is_empty()))
                    .unwrap_or(false)
            }) {
                first_text = Some(Instant::now());
            }
        }
    }
    Ok((out, first_text))
}

/// The JSON body of a non-streamed (content-length) response.
fn json_body(raw: &[u8]) -> Result<Value> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{}", head.lines().next().unwrap_or(""));
    }
    Ok(serde_json::from_str(body)?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A prompt of `n` tokens (as the server counts them: BOS plus `n - 1` pieces of " x"), found
/// by asking the server.
fn prompt_of(addr: &str, model: &str, n: usize) -> Result<String> {
    let mut words = n.saturating_sub(1);
    for _ in 0..4 {
        let p = " x".repeat(words);
        let v = json_body(
            &post(
                addr,
                "/v1/completions",
                &json!({"model": model, "prompt": p, "max_tokens": 1, "temperature": 0}),
            )?
            .0,
        )?;
        let got = v["usage"]["prompt_tokens"].as_u64().context("usage")? as usize;
        if got == n {
            return Ok(p);
        }
        words = (words + n).saturating_sub(got);
    }
    bail!("no prompt of {n} tokens found")
}

pub fn run(args: &[String]) -> Result<()> {
    let root = project_root();
    let (mut model, mut threads, mut rounds) = (
        root.join("models/smollm2-135m-instruct-q4_1/b158"),
        2usize,
        3usize,
    );
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--model" => model = PathBuf::from(value()?),
            "--threads" => threads = value()?.parse().context("--threads")?,
            "--rounds" => rounds = value()?.parse().context("--rounds")?,
            other => bail!("serve-bench: unknown argument '{other}'"),
        }
    }
    if !model.join("config.json").is_file() {
        bail!(
            "{}: not a model directory (run `cargo xtask pipeline` first, or pass --model)",
            model.display()
        );
    }
    let bin = crate::pipeline::build_smolbit()?;
    let id = model
        .canonicalize()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();

    // smolbit bench: the reference TTFT.
    let out = Command::new(&bin)
        .args([
            "--threads",
            &threads.to_string(),
            "bench",
            "--json",
            "--model",
        ])
        .arg(&model)
        .args(["--prompt-tokens", "128", "--new-tokens", "64", "--repeats"])
        .arg(rounds.to_string())
        .output()?;
    if !out.status.success() {
        bail!("smolbit bench: {}", String::from_utf8_lossy(&out.stderr));
    }
    let bench: Value = serde_json::from_slice(&out.stdout)?;
    let bench_ttft = bench["ttft_ms"].as_f64().context("ttft_ms")?;
    let bench_decode = bench["decode_tok_s"].as_f64().context("decode_tok_s")?;

    let (server, addr) = start(&bin, &model, threads, 4)?;
    let prompt = prompt_of(&addr, &id, 128)?;
    // Warm-up.
    post(
        &addr,
        "/v1/completions",
        &json!({"model": id, "prompt": prompt, "max_tokens": 8, "temperature": 0}),
    )?;
    let mut ttfts = Vec::new();
    for _ in 0..rounds {
        let sent = Instant::now();
        let (_, first) = post(
            &addr,
            "/v1/completions",
            &json!({"model": id, "prompt": prompt, "max_tokens": 4, "temperature": 0, "stream": true}),
        )?;
        let first = first.context("no text in the stream")?;
        ttfts.push(first.duration_since(sent).as_secs_f64() * 1e3);
    }
    // Throughput with 1 and 4 concurrent streams of 64 tokens (distinct short prompts).
    let throughput = |streams: usize| -> Result<f64> {
        let sent = Instant::now();
        let handles: Vec<_> = (0..streams)
            .map(|i| {
                let (addr, id) = (addr.clone(), id.clone());
                std::thread::spawn(move || -> Result<u64> {
                    let v = json_body(
                        &post(
                            &addr,
                            "/v1/completions",
                            &json!({"model": id, "prompt": format!("def f{i}(x):"),
                                "max_tokens": 64, "temperature": 0}),
                        )?
                        .0,
                    )?;
                    v["usage"]["completion_tokens"].as_u64().context("usage")
                })
            })
            .collect();
        let mut tokens = 0;
        for h in handles {
            tokens += h.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        }
        Ok(tokens as f64 / sent.elapsed().as_secs_f64())
    };
    let mut one = Vec::new();
    let mut four = Vec::new();
    for _ in 0..rounds {
        one.push(throughput(1)?);
        four.push(throughput(4)?);
    }
    drop(server);
    let (ttft, one, four) = (median(ttfts), median(one), median(four));
    let line = json!({
        "model": model.display().to_string(), "threads": threads, "rounds": rounds,
        "bench_ttft_ms": bench_ttft, "bench_decode_tok_s": bench_decode,
        "serve_ttft_ms": ttft, "serve_1_stream_tok_s": one, "serve_4_streams_tok_s": four,
    });
    let dir = root.join("reports").join("bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("serve.jsonl"), format!("{line}\n"))?;
    let rel = model
        .strip_prefix(&root)
        .unwrap_or(&model)
        .display()
        .to_string();
    let md = format!(
        "| model | threads | TTFT, smolbit bench (ms) | TTFT through serve (ms) | ratio | 1 stream (tok/s) | 4 streams, --parallel 4 (tok/s, all) | ratio |\n\
         |---|---|---|---|---|---|---|---|\n\
         | {rel} | {threads} | {bench_ttft:.0} | {ttft:.0} | {:.2} | {one:.1} | {four:.1} | {:.2} |\n\n\
         Medians of {rounds} rounds. TTFT: a 128-token prompt (`smolbit bench --prompt-tokens 128` against a streamed \
         `/v1/completions` request timed from sending to the first chunk with text). Streams: 64 tokens each, \
         completion tokens per second of wall time. Produced by `cargo xtask serve-bench`.\n",
        ttft / bench_ttft,
        four / one
    );
    std::fs::write(dir.join("serve.md"), &md)?;
    print!("{md}");
    Ok(())
}
