//! The report renderer on a fixed results file (`tests/fixtures/results.json`, written by
//! `smolbit eval --model m/f32 --model m/b158 --per-category 1 --max-new-tokens 128
//! --perplexity-max-tokens 512` on the default model): a snapshot of the Markdown, numbers traced
//! back to the results, escaping of hostile model text, template overrides, winners and ties.
//!
//! Set `UPDATE_SNAPSHOTS=1` to rewrite `tests/snapshots/report.md` after an intended change.

use std::path::{Path, PathBuf};

use smolbit_eval::results::Results;
use smolbit_report::{ReportOptions, codeblock, md, render, write_report};

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn fixture() -> Results {
    Results::read(&here().join("fixtures/results.json")).expect("fixture reads")
}

fn opts() -> ReportOptions {
    ReportOptions {
        reproduce: vec!["cargo xtask pipeline".into()],
        ..ReportOptions::default()
    }
}

#[test]
fn snapshot() {
    let r = render(&fixture(), &opts()).expect("renders");
    let path = here().join("snapshots/report.md");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, &r.markdown).expect("write snapshot");
    }
    let expected = std::fs::read_to_string(&path).expect("snapshot exists (UPDATE_SNAPSHOTS=1)");
    assert!(
        r.markdown == expected,
        "report differs from {}; rerun with UPDATE_SNAPSHOTS=1 if intended",
        path.display()
    );
    let names: Vec<&str> = r.charts.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "pass-rate-vs-bits.svg",
            "perplexity-vs-bits.svg",
            "decode-speed.svg"
        ]
    );
    for (_, svg) in &r.charts {
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
}

#[test]
fn figures_come_from_the_results() {
    let res = fixture();
    let md_text = render(&res, &opts()).expect("renders").markdown;
    for m in &res.models {
        let s = &m.summary;
        for needle in [
            format!(
                "{}/{} ({:.1} %)",
                s.syntax_valid,
                s.tasks,
                s.syntax_valid_rate * 100.0
            ),
            format!("{}/{} ({:.1} %)", s.passed, s.tasks, s.pass_rate * 100.0),
            format!("{}/{}", s.tests_passed, s.tests_total),
            format!("{} of {} answers", s.degenerate, s.tasks),
        ] {
            assert!(md_text.contains(&needle), "{}: '{needle}' missing", m.name);
        }
    }
    // Change a figure in the results: the report follows.
    let mut changed = res.clone();
    changed.models[0].summary.passed = 7;
    let text = render(&changed, &opts()).expect("renders").markdown;
    let tasks = changed.models[0].summary.tasks;
    assert!(text.contains(&format!("7/{tasks} (")));
}

#[test]
fn hostile_model_text_cannot_break_the_markdown() {
    let mut res = fixture();
    let hostile = "```\n# Heading\n| a | b |\n````\n<script>x</script>";
    res.models[0].tasks[0].samples[0].text = hostile.into();
    res.models[0].name = "evil | name `x`".into();
    let text = render(&res, &opts()).expect("renders").markdown;
    // The text sits inside a fence of five backticks (longer than its longest run, four).
    assert!(text.contains(&format!("`````text\n{hostile}\n`````")));
    assert!(text.contains("evil \\| name \\`x\\`"));
    assert!(!text.contains("| evil | name"));
    assert_eq!(codeblock("a ``` b", ""), "````\na ``` b\n````");
    assert_eq!(md("a|b\nc"), "a\\|b c");
}

#[test]
fn user_templates_override_the_built_in_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("report.md.j2"),
        "{% for m in models %}{{ m.name }}={{ m.summary.pass_rate | pct }};{% endfor %}",
    )
    .expect("write");
    let o = ReportOptions {
        templates: Some(dir.path().to_path_buf()),
        ..opts()
    };
    let res = fixture();
    let text = render(&res, &o).expect("renders").markdown;
    let expect: String = res
        .models
        .iter()
        .map(|m| format!("{}={:.1} %;", m.name, m.summary.pass_rate * 100.0))
        .collect();
    assert_eq!(text, expect);

    std::fs::write(dir.path().join("report.md.j2"), "{% for %}").expect("write");
    let err = render(&res, &o).expect_err("bad template").to_string();
    assert!(err.contains("report.md.j2") && !err.contains('\n'), "{err}");
}

#[test]
fn winners_and_ties() {
    let mut res = fixture();
    let text = render(&res, &opts()).expect("renders").markdown;
    let row = |t: &str, metric: &str| {
        t.lines()
            .find(|l| l.starts_with(&format!("| **{metric}**")))
            .map(String::from)
            .unwrap_or_default()
    };
    // The f32 model passes more tasks than b158 in the fixture; b158's weights are smaller.
    assert!(row(&text, "Tasks passed (pass@1)").ends_with(&format!("| {} |", res.models[0].name)));
    assert!(row(&text, "Weights on disk").ends_with(&format!("| {} |", res.models[1].name)));
    res.models[1].summary.pass_rate = res.models[0].summary.pass_rate;
    let text = render(&res, &opts()).expect("renders").markdown;
    assert!(row(&text, "Tasks passed (pass@1)").ends_with("| tie |"));
}

#[test]
fn writes_report_and_charts() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_report(dir.path(), &fixture(), &opts()).expect("writes");
    let md_text = std::fs::read_to_string(dir.path().join("report.md")).expect("report");
    for chart in ["pass-rate-vs-bits", "perplexity-vs-bits", "decode-speed"] {
        let rel = format!("charts/{chart}.svg");
        assert!(md_text.contains(&format!("({rel})")));
        assert!(dir.path().join(&rel).is_file());
    }
    let leftovers: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir").filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn distilled_students_get_a_perplexity_curve() {
    // The curve points come from the model's `distillation` record; every value is drawn and
    // labelled, and a model without one adds no chart.
    let mut res = fixture();
    let d = smolbit_eval::results::Distillation::from_distill_json(&serde_json::json!({
        "initial_perplexity": 218.0,
        "final_perplexity": 31.5,
        "e2e": {
            "curve": [{"step": 1, "tokens": 1024, "value": 2.0}, {"step": 2, "tokens": 2048, "value": 1.5}],
            "perplexity": [{"step": 1, "tokens": 1024, "value": 60.0}]
        }
    }))
    .expect("curves");
    assert_eq!(
        d.perplexity,
        vec![[0.0, 218.0], [1024.0, 60.0], [2048.0, 31.5]]
    );
    res.models[1].distillation = Some(d);
    let r = render(&res, &opts()).expect("renders");
    let (_, svg) = r
        .charts
        .iter()
        .find(|c| c.0 == "distillation.svg")
        .expect("a distillation chart");
    assert!(
        svg.contains(&format!("{} (31.5)", res.models[1].name)),
        "{svg}"
    );
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
}

#[test]
fn any_categories_and_the_prompt_style_are_reported() {
    // A suite of its own categories (HumanEval's single one here) is grouped by the categories
    // present, and each model's prompt style is printed.
    let mut res = fixture();
    res.dataset.path = "humaneval".into();
    for m in &mut res.models {
        for t in &mut m.tasks {
            t.category = "humaneval".into();
        }
        m.prompt_style = Some(smolbit_eval::results::PromptStyle::Completion);
    }
    res.models[0].prompt_style = None;
    let r = render(&res, &opts()).expect("renders");
    let md = &r.markdown;
    assert!(md.contains("| humaneval |"), "{md}");
    assert!(!md.contains("| function generation |"), "{md}");
    let row = |name: &str, style: &str| format!("| {name} | {style} |");
    // Results from before prompt styles asked in chat.
    assert!(md.contains(&row(&res.models[0].name, "chat")), "{md}");
    assert!(md.contains(&row(&res.models[1].name, "completion")), "{md}");
    assert!(md.contains("Suite: humaneval."), "{md}");
}
