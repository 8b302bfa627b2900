//! Checking a solution against a task's tests in the [`Sandbox`]: one `python3` process runs a
//! small harness that parses the solution with CPython's own parser (`ast.parse`), runs the
//! task's setup, the solution, then each test statement separately, and reports each step as it
//! finishes, so a test that hangs or crashes still leaves the ones before it counted.

use serde::{Deserialize, Serialize};

use crate::Task;
use crate::sandbox::{Exit, Sandbox, SandboxError};

/// The harness. The model's code sees stdout redirected to stderr; the harness reports on the
/// original stdout, each line prefixed by a per-run random tag.
const HARNESS: &str = r#"import ast, json, os, sys
with open(sys.argv[1], encoding="utf-8") as f:
    spec = json.load(f)
os.remove(sys.argv[1])
tag = spec.pop("tag")
out = os.fdopen(os.dup(1), "w", encoding="utf-8")
os.dup2(2, 1)
sys.stdout = sys.stderr

def report(**event):
    out.write("\n" + tag + json.dumps(event) + "\n")
    out.flush()

def describe(e):
    return (type(e).__name__ + ": " + str(e)).splitlines()[0][:300] if str(e) else type(e).__name__

solution = spec["solution"]
try:
    ast.parse(solution, filename="solution.py")
    report(event="syntax", valid=bool(solution.strip()), error=None if solution.strip() else "empty code")
except (SyntaxError, ValueError) as e:
    report(event="syntax", valid=False, error=describe(e))
    sys.exit(0)
if not solution.strip():
    sys.exit(0)
ns = {"__name__": "solution"}
try:
    exec(compile(spec["setup"], "test_setup.py", "exec"), ns)
except BaseException as e:
    report(event="setup", ok=False, error=describe(e))
    sys.exit(0)
try:
    exec(compile(solution, "solution.py", "exec"), ns)
except BaseException as e:
    report(event="solution", ok=False, error=describe(e))
    sys.exit(0)
report(event="solution", ok=True, error=None)
for i, test in enumerate(spec["tests"]):
    try:
        exec(compile(test, "test_%d.py" % i, "exec"), ns)
        report(event="test", index=i, ok=True, error=None)
    except BaseException as e:
        report(event="test", index=i, ok=False, error=describe(e))
report(event="done")
"#;

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every test passed.
    Passed,
    /// Some test failed.
    Failed,
    /// The code is empty or not valid Python.
    SyntaxError,
    /// The solution raised while being defined.
    SolutionError,
    /// The task's own setup failed (a dataset problem, not the model's).
    SetupError,
    /// Killed at the wall-clock timeout.
    Timeout,
    /// The process died (signal, memory or CPU limit) before finishing.
    Crashed,
    /// The model produced no answer (generation failed); nothing was run.
    GenerationError,
}

/// The result of checking one solution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    /// How it ended.
    pub outcome: Outcome,
    /// Non-empty code that CPython's parser accepts.
    pub syntax_valid: bool,
    /// Tests that passed.
    pub tests_passed: usize,
    /// Tests of the task.
    pub tests_total: usize,
    /// All tests passed.
    pub passed: bool,
    /// The first error (syntax, exception, timeout, signal), one line.
    pub error: Option<String>,
    /// Wall-clock time of the process in milliseconds.
    pub wall_ms: f64,
}

#[derive(Deserialize)]
struct Event {
    event: String,
    #[serde(default)]
    valid: bool,
    #[serde(default)]
    ok: bool,
    #[serde(default)]
    error: Option<String>,
}

fn random_tag() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let a = h.finish();
    h.write_u64(a);
    format!("@smolbit-{a:016x}{:016x}@", h.finish())
}

/// Check `solution` against `task`'s tests.
pub fn check(sandbox: &Sandbox, task: &Task, solution: &str) -> Result<Execution, SandboxError> {
    let tag = random_tag();
    let spec = serde_json::json!({
        "tag": tag,
        "setup": task.test_setup,
        "solution": solution,
        "tests": task.tests,
    })
    .to_string();
    let run = sandbox.run(
        &[("harness.py", HARNESS), ("spec.json", &spec)],
        &["-I", "-B", "harness.py", "spec.json"],
    )?;
    let events: Vec<Event> = run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix(tag.as_str()))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let tests_total = task.tests.len();
    let mut exec = Execution {
        outcome: Outcome::Crashed,
        syntax_valid: false,
        tests_passed: 0,
        tests_total,
        passed: false,
        error: None,
        wall_ms: run.wall_ms,
    };
    let mut done = false;
    for e in &events {
        match e.event.as_str() {
            "syntax" => {
                exec.syntax_valid = e.valid;
                if !e.valid {
                    exec.outcome = Outcome::SyntaxError;
                    exec.error = e.error.clone();
                }
            }
            "setup" if !e.ok => {
                exec.outcome = Outcome::SetupError;
                exec.error = e.error.clone();
            }
            "solution" if !e.ok => {
                exec.outcome = Outcome::SolutionError;
                exec.error = e.error.clone();
            }
            "test" => {
                if e.ok {
                    exec.tests_passed += 1;
                } else if exec.error.is_none() {
                    exec.error = e.error.clone();
                }
            }
            "done" => done = true,
            _ => {}
        }
    }
    let stopped_early = matches!(
        exec.outcome,
        Outcome::SyntaxError | Outcome::SetupError | Outcome::SolutionError
    );
    if !stopped_early {
        exec.outcome = match run.exit {
            Exit::Timeout => Outcome::Timeout,
            Exit::Code(0) if done && exec.tests_passed == tests_total => Outcome::Passed,
            Exit::Code(0) if done => Outcome::Failed,
            _ => Outcome::Crashed,
        };
        let why = match run.exit {
            Exit::Timeout => Some(format!(
                "timed out after {:.0} s",
                sandbox.limits().wall.as_secs_f64()
            )),
            Exit::Signal(s) => Some(format!("killed by signal {s}")),
            Exit::Code(c) if !done => Some(format!(
                "exited with status {c}: {}",
                last_line(&run.stderr)
            )),
            Exit::Code(_) => None,
        };
        if why.is_some() && exec.outcome != Outcome::Failed {
            exec.error = why;
        }
    }
    exec.passed = exec.outcome == Outcome::Passed;
    Ok(exec)
}

fn last_line(s: &str) -> String {
    let line = s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    line.chars().take(300).collect()
}
