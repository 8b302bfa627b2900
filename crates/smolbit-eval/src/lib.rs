//! The smolbit evaluator: runs models on a coding suite and measures what a user of a coding
//! model needs.
//!
//! - [`load_suite`]: the suite ([`Task`]), malformed input reported as `file:line: problem`;
//! - [`extract`]: the code in an answer, and degeneration flags ("method method method");
//! - [`sandbox`]: a confined `python3` process per run (timeout, rlimits, namespaces);
//! - [`check`]: syntax validity by CPython's parser and tests passed, per answer;
//! - [`run`]: the `smolbit eval` loop (generation, checks, timings, peak RSS, perplexity/KL
//!   against the first model, resumable);
//! - [`results`]: the versioned results JSON, pass@k, shard merging.
//!
//! Suite format (`datasets/coding-suite.jsonl`, one JSON object per line):
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `id` | string | unique task id |
//! | `category` | string | one of [`CATEGORIES`] (the original report's ten) |
//! | `prompt` | string | what the model is asked |
//! | `entry_point` | string | the function or class the tests call |
//! | `test_setup` | string | Python run before the solution (imports, fixture files) |
//! | `tests` | list of strings | Python statements, each usually an `assert` |
//! | `canonical_solution` | string | a reference solution that passes the tests |
//!
//! A task is checked by running `test_setup`, the solution, then each test statement in one
//! namespace ([`check`]); it passes when every test statement runs without raising.

pub mod check;
pub mod extract;
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
    /// One of [`CATEGORIES`].
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
}

/// Load and check a JSONL suite: every line a complete task with a known category, a unique id
/// and at least one test. Blank lines are skipped.
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
        if !CATEGORIES.contains(&task.category.as_str()) {
            return Err(err(format!(
                "task '{}' has unknown category '{}' (known: {})",
                task.id,
                task.category,
                CATEGORIES.join(", ")
            )));
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
