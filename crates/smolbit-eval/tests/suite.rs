//! The committed coding suite and HumanEval: they load, the suite covers every category, and
//! every canonical solution passes its tests in the sandbox (CPython) while a wrong solution (the
//! entry point as a stub) fails them.

use std::path::{Path, PathBuf};

use smolbit_eval::check::check;
use smolbit_eval::sandbox::{Limits, Sandbox};
use smolbit_eval::{CATEGORIES, Task, load_suite, parse_suite};

fn suite_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/coding-suite.jsonl")
}

/// Run a solution against the task's tests in the sandbox; true when every test passes.
fn passes(sb: &Sandbox, t: &Task, solution: &str) -> bool {
    check(sb, t, solution).expect("sandbox runs").passed
}

fn stub(t: &Task) -> String {
    let name = &t.entry_point;
    if name.starts_with(|c: char| c.is_uppercase()) {
        format!("class {name}:\n    pass\n")
    } else if t.category == "async_programming" {
        format!("async def {name}(*args, **kwargs):\n    return None\n")
    } else {
        format!("def {name}(*args, **kwargs):\n    return None\n")
    }
}

#[test]
fn builtin_suite_is_the_committed_file() {
    let text = std::fs::read_to_string(suite_path()).expect("suite");
    assert_eq!(smolbit_eval::BUILTIN_SUITE, text);
    let d = smolbit_eval::load_dataset(&smolbit_eval::DatasetSource::Builtin).expect("builtin");
    assert_eq!(d.tasks, load_suite(&suite_path()).expect("suite"));
}

/// HumanEval from the cache (`cargo xtask fetch-model` fetches it with the model); `None`, with
/// a note, when it is missing, unless `SMOLBIT_REQUIRE_MODEL=1` (`.ci/run`).
fn humaneval() -> Option<Vec<Task>> {
    let path = smolbit_eval::humaneval::cached_path();
    if !path.is_file() {
        assert_ne!(
            std::env::var("SMOLBIT_REQUIRE_MODEL").as_deref(),
            Ok("1"),
            "{}: missing; run `cargo xtask fetch-model`",
            path.display()
        );
        eprintln!(
            "skipped: {} not found (run `cargo xtask fetch-model`)",
            path.display()
        );
        return None;
    }
    let d = smolbit_eval::load_dataset(&smolbit_eval::DatasetSource::HumanEval).expect("loads");
    Some(d.tasks)
}

#[test]
fn humaneval_canonical_solutions_pass_and_stubs_fail() {
    let Some(tasks) = humaneval() else { return };
    assert_eq!(tasks.len(), 164);
    let sb = Sandbox::new(Limits::default()).expect("python3 runs");
    // Two sandboxed processes per problem: spread them over the cores.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = tasks
            .chunks(tasks.len().div_ceil(threads))
            .map(|part| {
                let sb = &sb;
                s.spawn(move || {
                    let mut f = Vec::new();
                    for t in part {
                        if !passes(sb, t, &t.canonical_solution) {
                            f.push(format!("{}: canonical solution fails", t.id));
                        }
                        // The stub alone: the prompt with `pass` as the body.
                        if passes(sb, t, &format!("{}    pass\n", t.prompt)) {
                            f.push(format!("{}: the bare stub passes", t.id));
                        }
                    }
                    f
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect()
    });
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn suite_covers_every_category() {
    let tasks = load_suite(&suite_path()).expect("suite loads");
    assert!(tasks.len() >= 60, "{} tasks", tasks.len());
    for c in CATEGORIES {
        let n = tasks.iter().filter(|t| t.category == c).count();
        assert!(n >= 5, "{c}: {n} tasks");
    }
}

#[test]
fn canonical_solutions_pass_and_stubs_fail() {
    let tasks = load_suite(&suite_path()).expect("suite loads");
    let sb = Sandbox::new(Limits::default()).expect("python3 runs");
    let mut failures = Vec::new();
    for t in &tasks {
        if !passes(&sb, t, &t.canonical_solution) {
            failures.push(format!("{}: canonical solution fails", t.id));
        }
        if passes(&sb, t, &stub(t)) {
            failures.push(format!("{}: a stub passes (tests cannot fail)", t.id));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

fn check_bad(text: &str, expect: &str) {
    let err = parse_suite(text, Path::new("suite.jsonl"))
        .expect_err("must fail")
        .to_string();
    assert!(
        err.starts_with("suite.jsonl") && err.contains(expect),
        "expected '{expect}' in: {err}"
    );
    assert!(!err.contains('\n'), "not one line: {err}");
}

#[test]
fn malformed_suites_name_the_line() {
    let good = r#"{"id": "a", "category": "bug_fixing", "prompt": "p", "entry_point": "f", "test_setup": "", "tests": ["assert f()"], "canonical_solution": "def f():\n    return 1\n"}"#;
    assert_eq!(parse_suite(good, Path::new("s")).expect("parses").len(), 1);
    check_bad(&format!("{good}\n{{not json"), "suite.jsonl:2: not a task");
    // Any category name loads (reports group by the ones present); an empty one does not.
    let poetry = parse_suite(&good.replace("bug_fixing", "poetry"), Path::new("s")).expect("any");
    assert_eq!(poetry[0].category, "poetry");
    check_bad(
        &format!("\n{}", good.replace("bug_fixing", "")),
        "suite.jsonl:2: task 'a' has no category",
    );
    check_bad(
        &good.replace(r#""tests": ["assert f()"]"#, r#""tests": []"#),
        "suite.jsonl:1: task 'a' has no tests",
    );
    check_bad(
        &good.replace(r#""entry_point": "f", "#, ""),
        "suite.jsonl:1: not a task: missing field `entry_point`",
    );
    check_bad(
        &good.replace(r#""id": "a", "#, r#""id": "a", "extra": 1, "#),
        "unknown field `extra`",
    );
    check_bad(
        &format!("{good}\n{good}"),
        "suite.jsonl:2: duplicate task id 'a'",
    );
    check_bad("\n\n", "suite.jsonl: no tasks");
}
