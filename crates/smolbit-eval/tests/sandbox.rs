//! The sandbox contains what model-written code might do: loop forever, allocate without bound,
//! write outside its directory, reach the network, read the evaluator's environment, signal the
//! evaluator, leave files behind. And the harness reports syntax, errors and partial passes.
//!
//! On Linux the namespace isolation is required (it is available as root and with unprivileged
//! user namespaces); set `SMOLBIT_ALLOW_WEAK_SANDBOX=1` to run where it is not, in which case the
//! write and network checks are skipped with a message.

use std::time::{Duration, Instant};

use smolbit_eval::Task;
use smolbit_eval::check::{Outcome, check};
use smolbit_eval::sandbox::{Exit, Isolation, Limits, Sandbox};

fn sandbox(wall_s: u64) -> Sandbox {
    let limits = Limits {
        wall: Duration::from_secs(wall_s),
        memory_bytes: 512 << 20,
        ..Limits::default()
    };
    let sb = Sandbox::new(limits).expect("python3 runs in the sandbox");
    if cfg!(target_os = "linux") && std::env::var_os("SMOLBIT_ALLOW_WEAK_SANDBOX").is_none() {
        assert_eq!(
            sb.isolation(),
            Isolation::Namespaces,
            "namespaces unavailable; set SMOLBIT_ALLOW_WEAK_SANDBOX=1 to accept"
        );
    }
    sb
}

fn strong(sb: &Sandbox) -> bool {
    if sb.isolation() != Isolation::Namespaces {
        eprintln!("skipped: no namespace isolation on this machine");
        return false;
    }
    true
}

fn task(tests: &[&str]) -> Task {
    Task {
        id: "t".into(),
        category: "function_generation".into(),
        prompt: String::new(),
        entry_point: "f".into(),
        test_setup: String::new(),
        tests: tests.iter().map(|s| s.to_string()).collect(),
        canonical_solution: String::new(),
        stub: false,
    }
}

#[test]
fn infinite_loop_is_killed_at_the_timeout() {
    let sb = sandbox(2);
    let start = Instant::now();
    let ex = check(
        &sb,
        &task(&["assert f() == 1"]),
        "def f():\n    while True:\n        pass\n",
    )
    .expect("runs");
    let took = start.elapsed();
    assert_eq!(ex.outcome, Outcome::Timeout, "{ex:?}");
    assert!(!ex.passed && ex.tests_passed == 0);
    // 2 s timeout; 3 s of slack for process start and teardown on a loaded 2-core machine.
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn a_hang_after_passing_tests_keeps_the_passes() {
    let sb = sandbox(2);
    let ex = check(
        &sb,
        &task(&[
            "assert f(1) == 2",
            "assert f(2) == 3",
            "import time\ntime.sleep(60)",
        ]),
        "def f(x):\n    return x + 1\n",
    )
    .expect("runs");
    assert_eq!(ex.outcome, Outcome::Timeout);
    assert_eq!((ex.tests_passed, ex.tests_total), (2, 3));
}

#[test]
fn unbounded_allocation_hits_the_memory_limit() {
    let sb = sandbox(20);
    let code = "def f():\n    xs = []\n    while True:\n        xs.append(bytearray(16 << 20))\n";
    let start = Instant::now();
    let ex = check(&sb, &task(&["f()"]), code).expect("runs");
    assert_eq!(ex.outcome, Outcome::Failed, "{ex:?}");
    assert!(
        ex.error.as_deref().unwrap_or("").contains("MemoryError"),
        "{ex:?}"
    );
    // Stopped by the 512 MiB limit long before the 20 s timeout.
    assert!(start.elapsed() < Duration::from_secs(15));
}

#[test]
fn writes_outside_the_directory_are_refused() {
    let sb = sandbox(10);
    if !strong(&sb) {
        return;
    }
    let outside = tempfile::tempdir().expect("tempdir");
    let target = outside.path().join("escaped.txt");
    let code = format!(
        "import os\n\
         def f():\n\
         \x20   open('inside.txt', 'w').write('ok')\n\
         \x20   assert open('inside.txt').read() == 'ok'\n\
         \x20   for path in [{target:?}, '../escaped.txt', '/tmp/smolbit-escaped.txt', os.path.expanduser('~/../escaped.txt')]:\n\
         \x20       try:\n\
         \x20           open(path, 'w').write('escaped')\n\
         \x20           return path\n\
         \x20       except OSError:\n\
         \x20           pass\n\
         \x20   return None\n",
        target = target.display().to_string()
    );
    let ex = check(&sb, &task(&["assert f() is None, f()"]), &code).expect("runs");
    assert_eq!(ex.outcome, Outcome::Passed, "{ex:?}");
    assert!(!target.exists());
    assert!(!std::path::Path::new("/tmp/smolbit-escaped.txt").exists());
}

#[test]
fn no_network() {
    let sb = sandbox(10);
    if !strong(&sb) {
        return;
    }
    // A listener in the evaluator's own network namespace: reachable from here, not from inside.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let code = format!(
        "import socket\n\
         def f():\n\
         \x20   try:\n\
         \x20       socket.create_connection(('127.0.0.1', {port}), timeout=2)\n\
         \x20       return 'connected'\n\
         \x20   except OSError as e:\n\
         \x20       return 'refused'\n"
    );
    let ex = check(&sb, &task(&["assert f() == 'refused'"]), &code).expect("runs");
    assert_eq!(ex.outcome, Outcome::Passed, "{ex:?}");
}

#[test]
fn cannot_see_secrets_or_signal_the_evaluator() {
    let sb = sandbox(10);
    // SAFETY: set before any thread of this test reads the environment; the variable is unique.
    unsafe { std::env::set_var("SMOLBIT_TEST_SECRET", "hunter2") };
    let pid = std::process::id();
    let mut tests = vec![
        "import os\nassert 'SMOLBIT_TEST_SECRET' not in os.environ".to_string(),
        "import os\nassert set(os.environ) <= {'HOME', 'LANG', 'LC_CTYPE', 'PATH', 'PYTHONDONTWRITEBYTECODE', 'PYTHONHASHSEED', 'PYTHONIOENCODING', 'PYTHONNOUSERSITE'}, sorted(os.environ)".to_string(),
    ];
    if strong(&sb) {
        tests.push(format!(
            "import os\ntry:\n    os.kill({pid}, 0)\n    assert False, 'evaluator visible'\nexcept ProcessLookupError:\n    pass"
        ));
    }
    let t = Task { tests, ..task(&[]) };
    let ex = check(&sb, &t, "def f():\n    pass\n").expect("runs");
    assert_eq!(ex.outcome, Outcome::Passed, "{ex:?}");
}

#[test]
fn the_working_directory_is_removed() {
    let sb = sandbox(10);
    let run = sb
        .run(
            &[],
            &[
                "-c",
                "import os; open('x', 'w').write('1'); print(os.getcwd())",
            ],
        )
        .expect("runs");
    assert_eq!(run.exit, Exit::Code(0), "{}", run.stderr);
    let dir = std::path::PathBuf::from(run.stdout.trim());
    assert!(dir.is_absolute() && !dir.exists(), "{dir:?} left behind");
}

#[test]
fn harness_reports_syntax_errors_and_failures() {
    let sb = sandbox(10);
    let t = task(&["assert f(1) == 1", "assert f(2) == 4"]);
    let ex = check(&sb, &t, "def f(x):\n    return x\n").expect("runs");
    assert_eq!(
        (ex.outcome, ex.tests_passed, ex.passed),
        (Outcome::Failed, 1, false)
    );
    assert!(
        ex.syntax_valid
            && ex
                .error
                .as_deref()
                .unwrap_or("")
                .starts_with("AssertionError")
    );

    let ex = check(&sb, &t, "def f(x) return x\n").expect("runs");
    assert_eq!((ex.outcome, ex.syntax_valid), (Outcome::SyntaxError, false));

    // ast.parse accepts empty code; the evaluator does not.
    for empty in ["", "   \n\n", "# just a comment\n"] {
        let ex = check(&sb, &t, empty).expect("runs");
        let expect_valid = !empty.trim().is_empty();
        assert_eq!(ex.syntax_valid, expect_valid, "{empty:?}");
        assert!(!ex.passed);
    }

    let ex = check(&sb, &t, "raise RuntimeError('boom')\n").expect("runs");
    assert_eq!(ex.outcome, Outcome::SolutionError);
    assert_eq!(ex.error.as_deref(), Some("RuntimeError: boom"));

    // Printing a lot must not drown the harness's reports; sys.exit in a test is a failure.
    let ex = check(
        &sb,
        &task(&[
            "assert f(1) == 1",
            "import sys\nsys.exit(0)",
            "assert f(3) == 3",
        ]),
        "def f(x):\n    print('x' * 200000)\n    return x\n",
    )
    .expect("runs");
    assert_eq!(
        (ex.outcome, ex.tests_passed),
        (Outcome::Failed, 2),
        "{ex:?}"
    );

    let setup = Task {
        test_setup: "import no_such_module_smolbit".into(),
        ..t.clone()
    };
    let ex = check(&sb, &setup, "def f(x):\n    return x\n").expect("runs");
    assert_eq!(ex.outcome, Outcome::SetupError);
    assert!(
        ex.error
            .as_deref()
            .unwrap_or("")
            .contains("ModuleNotFoundError")
    );

    // A hard crash of the interpreter.
    let ex = check(&sb, &t, "import ctypes\nctypes.string_at(0)\n").expect("runs");
    assert_eq!(ex.outcome, Outcome::Crashed, "{ex:?}");
}
