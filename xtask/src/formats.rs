//! `cargo xtask native-formats [--dir DIR] [--peer FILE ...]`: every natively ternary format
//! of one model holds the same trits, loads and generates.
//!
//! `DIR` (default `models/bitnet-2b-formats`) holds one BitNet-2B4T-shaped random model written
//! by `cargo xtask random-model --shape bitnet-2b --format F` in each format (`hf-offline`,
//! `hf-bitlinear`, `hf-online`, `tq1_0.gguf`, `tq2_0.gguf`, `i2_s.gguf`); `--peer` adds GGUFs
//! the peer engines' own quantizers made from the same model (llama.cpp's TQ1_0 / TQ2_0,
//! bitnet.cpp's I2_S). Each GGUF is converted with `smolbit convert`; then every format's
//! projections are read and their trits compared, tensor by tensor, with the first format's, and
//! `smolbit bench` loads each and generates 8 tokens. Writes `reports/bench/native-formats.md`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use smolbit_weights::ModelDir;
use smolbit_weights::mapping::{Role, needed_tensors};

use crate::project_root;

/// For a peer engine's GGUF, whether its ternary tensors hold the same bytes as the GGUF of that
/// type among `ours`: `"210/210"` tensors equal, or `"-"` when there is none to compare.
fn same_bytes(peer: &Path, ours: &[PathBuf]) -> Result<String> {
    use smolbit_weights::dequant::GgmlType;
    use smolbit_weights::gguf::GgufFile;
    let p = GgufFile::open(peer)?;
    let ty = |g: &GgufFile| {
        g.tensor("blk.0.attn_q.weight")
            .map(|t| t.ggml_type)
            .filter(|t| t.ternary().is_some())
    };
    let Some(want) = ty(&p) else {
        return Ok("-".into());
    };
    for o in ours {
        let g = GgufFile::open(o)?;
        if ty(&g) != Some(want) {
            continue;
        }
        let (mut same, mut n) = (0, 0);
        for t in p.tensors.iter().filter(|t| t.ggml_type == want) {
            n += 1;
            // I2_S: the codes and the f32 scale; the 28 bytes of padding after them are left
            // uninitialized by bitnet.cpp's quantizer.
            let used = |b: &[u8]| match want {
                GgmlType::I2_S => b[..(t.n_elements() / 4 + 4) as usize].to_vec(),
                _ => b.to_vec(),
            };
            if g.tensor(&t.name)
                .is_some_and(|u| used(g.tensor_bytes(u)) == used(p.tensor_bytes(t)))
            {
                same += 1;
            }
        }
        return Ok(format!(
            "{same}/{n} equal to {}",
            o.file_name().unwrap_or_default().to_string_lossy()
        ));
    }
    Ok("-".into())
}

/// sha256 of every projection's trits, in checkpoint order, and the scales' range.
fn trit_digest(dir: &Path) -> Result<(String, usize, f32, f32)> {
    let md = ModelDir::open(dir)?;
    let mut h = Sha256::new();
    let (mut n, mut lo, mut hi) = (0, f32::INFINITY, 0f32);
    for t in needed_tensors(&md.config) {
        if !matches!(t.role, Role::Layer(l) if l.is_linear()) {
            continue;
        }
        let m = md
            .linear_ternary(&t.hf_name, t.shape[0], t.shape[1])?
            .with_context(|| format!("{}: {} is not ternary", dir.display(), t.hf_name))?;
        h.update(m.trits.iter().map(|&x| x as u8).collect::<Vec<u8>>());
        for &s in &m.scales {
            lo = lo.min(s);
            hi = hi.max(s);
        }
        n += 1;
        md.weights.release();
    }
    Ok((
        h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
        n,
        lo,
        hi,
    ))
}

pub fn run(args: &[String]) -> Result<()> {
    let root = project_root();
    let (mut dir, mut peers) = (root.join("models/bitnet-2b-formats"), Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--dir" => dir = PathBuf::from(value()?),
            "--peer" => peers.push(PathBuf::from(value()?)),
            other => bail!("native-formats: unknown argument '{other}'"),
        }
    }
    let bin = crate::pipeline::build_smolbit()?;
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| {
            format!(
                "{}: write the formats with cargo xtask random-model",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("config.json").is_file() || p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    inputs.sort();
    let ours: Vec<PathBuf> = inputs
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .cloned()
        .collect();
    let peer_set: Vec<PathBuf> = peers.clone();
    inputs.extend(peers);
    let converted = dir.join("converted");
    std::fs::create_dir_all(&converted)?;
    let mut md = String::from(
        "| format | input | converted | projections | trits (sha256 of all) | same as first | scales | ternary tensor bytes (peer files) | loads, decode tok/s (8 tokens, 2 threads) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut first: Option<String> = None;
    for input in &inputs {
        let name = input
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let model = if input.is_dir() {
            input.clone()
        } else {
            let out = converted.join(name.trim_end_matches(".gguf"));
            if !out.join("config.json").is_file() {
                eprintln!("[native-formats] smolbit convert {}", input.display());
                let o = Command::new(&bin)
                    .arg("convert")
                    .arg(input)
                    .arg("--out")
                    .arg(&out)
                    .output()?;
                if !o.status.success() {
                    bail!(
                        "{}: {}",
                        input.display(),
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
            }
            out
        };
        eprintln!("[native-formats] {name}: reading trits");
        let (digest, n, lo, hi) = trit_digest(&model)?;
        let same = match &first {
            None => {
                first = Some(digest.clone());
                "(reference)".to_string()
            }
            Some(f) => if *f == digest { "yes" } else { "**no**" }.to_string(),
        };
        eprintln!("[native-formats] {name}: bench");
        let o = Command::new(&bin)
            .args(["--threads", "2", "bench", "--json", "--repeats", "1"])
            .args(["--prompt-tokens", "16", "--new-tokens", "8", "--model"])
            .arg(&model)
            .output()?;
        let decode = if o.status.success() {
            let line = String::from_utf8_lossy(&o.stdout)
                .lines()
                .last()
                .unwrap_or_default()
                .to_string();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            format!("yes, {:.1}", v["decode_tok_s"].as_f64().unwrap_or(f64::NAN))
        } else {
            format!("**failed**: {}", String::from_utf8_lossy(&o.stderr).trim())
        };
        let rel = |p: &Path| p.strip_prefix(&root).unwrap_or(p).display().to_string();
        let bytes = if peer_set.contains(input) {
            same_bytes(input, &ours)?
        } else {
            "-".into()
        };
        md.push_str(&format!(
            "| {name} | {} | {} | {n} | `{}…` | {same} | {lo:.4e} .. {hi:.4e} | {bytes} | {decode} |\n",
            rel(input),
            if input.is_dir() {
                "-".into()
            } else {
                rel(&model)
            },
            &digest[..16],
        ));
    }
    md.push_str(
        "\nEach format's projections read back as trits (GGUFs after `smolbit convert`) and hashed in checkpoint order; \
         scales differ only by the format's precision (bf16 `weight_scale`, f16 TQ block scales, f32 I2_S). \
         For the peer engines' files (made by their own `llama-quantize` from an F16 GGUF of the same model), \
         the last column compares their ternary tensors byte for byte with smolbit's GGUF of the same type \
         (I2_S: the codes and the scale, not the 28 padding bytes after them, which bitnet.cpp leaves uninitialized). \
         Produced by `cargo xtask native-formats`.\n",
    );
    let out = root.join("reports/bench/native-formats.md");
    std::fs::create_dir_all(out.parent().unwrap_or(&root))?;
    std::fs::File::create(&out)?.write_all(md.as_bytes())?;
    print!("{md}");
    if md.contains("**no**") || md.contains("**failed**") {
        bail!("formats disagree or fail to run: {}", out.display());
    }
    Ok(())
}
