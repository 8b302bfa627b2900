//! Training text: the Python standard library of the machine's `python3` (found through
//! `sysconfig`) and the user's files, tokenized with the teacher's tokenizer, packed into
//! sequences and shuffled by seed. Modules of the held-out perplexity text are left out.
//!
//! A fraction of the sequences is chat-formatted: the teacher's chat template around a task
//! made from a function's docstring and that function's source as the answer
//! (`chat_pairs.py`). Raw code alone does not distill an instruct model's chat behaviour: a
//! student trained only on it answered coding prompts with an empty code block.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::DistillError;

/// SplitMix64: a small, portable, seeded generator (the same sequence on every platform).
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// The packed training sequences.
#[derive(Debug)]
pub(crate) struct Corpus {
    /// `sequences × seq_len` token ids, in training order.
    pub tokens: Vec<u32>,
    pub seq_len: usize,
    /// Tokens in the whole corpus before packing.
    pub corpus_tokens: usize,
    /// Files read.
    pub files: usize,
    /// sha256 over every file's path and bytes, in sorted order.
    pub hash: String,
    /// Chat-formatted documents and their tokens (before packing).
    pub chat_docs: usize,
    pub chat_tokens: usize,
}

impl Corpus {
    pub fn sequences(&self) -> usize {
        self.tokens.len() / self.seq_len
    }

    /// Sequence `i` (wrapping around).
    pub fn sequence(&self, i: usize) -> &[u32] {
        let i = i % self.sequences().max(1);
        &self.tokens[i * self.seq_len..(i + 1) * self.seq_len]
    }
}

/// The standard library directory of `python3`.
pub(crate) fn stdlib_dir() -> Result<PathBuf, DistillError> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        .map_err(|e| DistillError::Data(format!("python3 (for its standard library): {e}")))?;
    if !out.status.success() {
        return Err(DistillError::Data(
            "python3 -c 'import sysconfig' failed: cannot find the standard library".into(),
        ));
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

/// Module paths (`textwrap.py`) named by the held-out text's `# ===== Lib/<file> ... =====`
/// headers (the file name ends at the first space: `datasets/text` adds the CPython version).
pub(crate) fn heldout_modules(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# ===== Lib/"))
        .filter(|l| l.ends_with(" ====="))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect()
}

fn walk(dir: &Path, only_py: bool, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "__pycache__" || name == "site-packages" {
            continue;
        }
        let ft = e.file_type()?;
        if ft.is_dir() {
            walk(&e.path(), only_py, out)?;
        } else if ft.is_file() && (!only_py || name.ends_with(".py")) {
            out.push(e.path());
        }
    }
    Ok(())
}

/// Files of the training corpus: the standard library's `.py` files (unless `stdlib` is false)
/// less the held-out modules, then every file of `extra` (directories walked, hidden entries
/// skipped), each with the name it is hashed under.
pub(crate) fn corpus_files(
    stdlib: bool,
    extra: &[PathBuf],
    heldout: &[String],
) -> Result<Vec<(String, PathBuf)>, DistillError> {
    let mut files = Vec::new();
    if stdlib {
        let root = stdlib_dir()?;
        let mut found = Vec::new();
        walk(&root, true, &mut found)
            .map_err(|e| DistillError::Data(format!("{}: {e}", root.display())))?;
        for p in found {
            let rel = p
                .strip_prefix(&root)
                .unwrap_or(&p)
                .to_string_lossy()
                .replace('\\', "/");
            if !heldout.contains(&rel) {
                files.push((format!("stdlib/{rel}"), p));
            }
        }
    }
    for e in extra {
        let meta = std::fs::metadata(e)
            .map_err(|err| DistillError::Data(format!("{}: {err}", e.display())))?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(e, false, &mut found)
                .map_err(|err| DistillError::Data(format!("{}: {err}", e.display())))?;
            files.extend(found.into_iter().map(|p| (p.display().to_string(), p)));
        } else {
            files.push((e.display().to_string(), e.clone()));
        }
    }
    Ok(files)
}

/// Chat-formatted documents from the Python files among `files`: each public top-level
/// function with a docstring becomes a user turn (the signature and the docstring's first
/// paragraph) and an assistant turn (the source in a code block), rendered with the teacher's
/// chat template and tokenized without added special tokens (the template writes them).
pub(crate) fn chat_docs(
    files: &[(String, PathBuf)],
    template: &smolbit_generate::ChatTemplate,
    render: &smolbit_generate::RenderOptions,
    tokenizer: &tokenizers::Tokenizer,
) -> Result<Vec<Vec<u32>>, DistillError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let paths: String = files
        .iter()
        .filter(|(_, p)| p.extension().is_some_and(|e| e == "py"))
        .map(|(_, p)| format!("{}\n", p.display()))
        .collect();
    let fail = |e: String| DistillError::Data(format!("python3 (chat pairs from the corpus): {e}"));
    let mut child = Command::new("python3")
        .args(["-c", include_str!("chat_pairs.py")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    let mut stdin = child.stdin.take().ok_or_else(|| fail("no stdin".into()))?;
    let writer = std::thread::spawn(move || stdin.write_all(paths.as_bytes()));
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    let _ = writer.join();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(fail(err.lines().last().unwrap_or("failed").to_string()));
    }
    let opts = smolbit_generate::RenderOptions {
        add_generation_prompt: false,
        enable_thinking: Some(false),
        ..render.clone()
    };
    let mut docs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| fail(e.to_string()))?;
        let (Some(prompt), Some(code)) = (v["prompt"].as_str(), v["code"].as_str()) else {
            continue;
        };
        let messages = [
            smolbit_generate::Message::new("user", prompt),
            smolbit_generate::Message::new("assistant", &format!("```python\n{code}\n```")),
        ];
        let text = template
            .render(&messages, &opts)
            .map_err(|e| DistillError::Data(format!("the teacher's chat template: {e}")))?;
        let ids = tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| DistillError::Data(format!("tokenizing a chat pair: {e}")))?;
        docs.push(ids.get_ids().to_vec());
    }
    Ok(docs)
}

/// Join shuffled documents with `sep` and cut the stream into `seq_len` token sequences.
fn pack(mut docs: Vec<Vec<u32>>, sep: u32, seq_len: usize, rng: &mut Rng) -> Vec<Vec<u32>> {
    rng.shuffle(&mut docs);
    let mut stream = Vec::with_capacity(docs.iter().map(|d| d.len() + 1).sum());
    for d in docs {
        stream.extend_from_slice(&d);
        stream.push(sep);
    }
    stream.chunks_exact(seq_len).map(<[u32]>::to_vec).collect()
}

/// Code sequences with chat ones put in so that sequence `j` is a chat one when
/// `(j + 1) · fraction` passes an integer (chat sequences repeat if they run out), until the
/// code sequences run out; flattened.
fn interleave(code: Vec<Vec<u32>>, chat: Vec<Vec<u32>>, fraction: f64) -> Vec<u32> {
    let fraction = if chat.is_empty() {
        0.0
    } else {
        fraction.clamp(0.0, 0.9)
    };
    let len = code.first().map_or(0, Vec::len);
    let mut tokens = Vec::with_capacity((code.len() as f64 / (1.0 - fraction)) as usize * len);
    let (mut ci, mut hi, mut j) = (0usize, 0usize, 0usize);
    while ci < code.len() {
        if ((j + 1) as f64 * fraction).floor() > (j as f64 * fraction).floor() {
            tokens.extend_from_slice(&chat[hi % chat.len()]);
            hi += 1;
        } else {
            tokens.extend_from_slice(&code[ci]);
            ci += 1;
        }
        j += 1;
    }
    tokens
}

/// Read, tokenize (no special tokens; documents joined by `sep`), pack into `seq_len` token
/// sequences and shuffle: documents by `seed` before packing, sequences after. Chat documents
/// are packed apart and [`interleave`]d at `chat_fraction`.
pub(crate) fn build(
    files: &[(String, PathBuf)],
    tokenizer: &tokenizers::Tokenizer,
    sep: u32,
    seq_len: usize,
    seed: u64,
    chat: Vec<Vec<u32>>,
    chat_fraction: f64,
) -> Result<Corpus, DistillError> {
    let mut hasher = Sha256::new();
    let mut texts = Vec::with_capacity(files.len());
    for (name, path) in files {
        let bytes = std::fs::read(path)
            .map_err(|e| DistillError::Data(format!("{}: {e}", path.display())))?;
        hasher.update(name.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
        // Files that are not UTF-8 (a few test fixtures in the standard library) are skipped.
        if let Ok(t) = String::from_utf8(bytes)
            && !t.trim().is_empty()
        {
            texts.push(t);
        }
    }
    let hash = format!("{:x}", hasher.finalize());
    let docs: Vec<Vec<u32>> = std::thread::scope(|s| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = texts.len().div_ceil(threads).max(1);
        let handles: Vec<_> = texts
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|t| {
                            tokenizer
                                .encode(t.as_str(), false)
                                .map(|e| e.get_ids().to_vec())
                                .map_err(|e| e.to_string())
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("tokenizer thread panicked".into()))
            })
            .collect::<Result<Vec<Vec<_>>, _>>()
            .map(|v| v.into_iter().flatten().collect())
    })
    .map_err(|e| DistillError::Data(format!("tokenizing the corpus: {e}")))?;
    let corpus_tokens: usize = docs.iter().map(Vec::len).sum();
    let (chat_docs, chat_tokens) = (chat.len(), chat.iter().map(Vec::len).sum());
    let mut rng = Rng::new(seed);
    let mut code = pack(docs, sep, seq_len, &mut rng);
    if code.is_empty() {
        return Err(DistillError::Data(format!(
            "the training data hold {corpus_tokens} tokens, fewer than one sequence of {seq_len}"
        )));
    }
    rng.shuffle(&mut code);
    let mut chat = pack(chat, sep, seq_len, &mut rng);
    rng.shuffle(&mut chat);
    let tokens = interleave(code, chat, chat_fraction);
    Ok(Corpus {
        tokens,
        seq_len,
        corpus_tokens,
        files: files.len(),
        hash,
        chat_docs,
        chat_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let mut a: Vec<u32> = (0..100).collect();
        let mut b = a.clone();
        Rng::new(7).shuffle(&mut a);
        Rng::new(7).shuffle(&mut b);
        assert_eq!(a, b);
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        a.sort_unstable();
        assert_eq!(a, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn chat_sequences_come_at_the_asked_fraction() {
        let code: Vec<Vec<u32>> = (0..6).map(|i| vec![i; 2]).collect();
        let chat: Vec<Vec<u32>> = (0..2).map(|i| vec![100 + i; 2]).collect();
        // Every fourth sequence is a chat one, repeating the two until the code runs out.
        let seqs: Vec<u32> = interleave(code.clone(), chat.clone(), 0.25)
            .chunks(2)
            .map(|c| c[0])
            .collect();
        assert_eq!(seqs, vec![0, 1, 2, 100, 3, 4, 5]);
        // A half: alternate.
        let seqs: Vec<u32> = interleave(code.clone(), chat.clone(), 0.5)
            .chunks(2)
            .map(|c| c[0])
            .collect();
        assert_eq!(seqs, vec![0, 100, 1, 101, 2, 100, 3, 101, 4, 100, 5]);
        // No chat data or a zero fraction: the code alone, in order.
        assert_eq!(interleave(code.clone(), vec![], 0.5), code.concat());
        assert_eq!(interleave(code.clone(), chat, 0.0), code.concat());
    }

    #[test]
    fn heldout_headers_name_modules() {
        let t =
            "# ===== Lib/textwrap.py =====\nx = 1\n# ===== Lib/bisect.py (CPython 3.11.7) =====\n";
        assert_eq!(heldout_modules(t), vec!["textwrap.py", "bisect.py"]);
        // The project's own held-out text, as shipped.
        let shipped = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../datasets/text/heldout-code.py"),
        )
        .expect("held-out text");
        assert_eq!(heldout_modules(&shipped), vec!["textwrap.py", "bisect.py"]);
    }
}
