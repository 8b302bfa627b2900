//! The committed coding suite: loads, covers every category, and every canonical solution passes
//! its tests in the sandbox (CPython) while a wrong solution (the entry point as a stub) fails them.

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
    check_bad(
        &format!("\n{}", good.replace("bug_fixing", "poetry")),
        "suite.jsonl:2: task 'a' has unknown category 'poetry'",
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
