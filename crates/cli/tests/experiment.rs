//! The experiment runner's cache: a re-run redoes nothing but the report (and writes the same
//! report), a changed input re-runs its stage and the stages that read it, and only those.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn head(from: &Path, to: &Path, lines: usize) {
    let text = std::fs::read_to_string(from).unwrap();
    let kept: Vec<&str> = text.lines().take(lines).collect();
    std::fs::write(to, kept.join("\n") + "\n").unwrap();
}

/// Runs the experiment; returns stage name -> ran.
fn run(experiment: &Path, dir: &Path) -> Vec<(String, bool)> {
    let out = Command::new(env!("CARGO_BIN_EXE_gpt-oss-lite"))
        .arg("run")
        .arg(experiment)
        .arg("--cache")
        .arg(dir.join("cache"))
        .arg("--out")
        .arg(dir.join("report"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_string(),
                s["ran"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn ran(stages: &[(String, bool)]) -> Vec<&str> {
    stages
        .iter()
        .filter(|(_, ran)| *ran)
        .map(|(s, _)| s.as_str())
        .collect()
}

#[test]
fn changed_inputs_rerun_their_stage_and_the_later_ones_only() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let nano = repo().join("datasets/nano");
    head(
        &nano.join("calibration/diverse.jsonl"),
        &d.join("calibration.jsonl"),
        60,
    );
    head(
        &nano.join("calibration/math-probes.jsonl"),
        &d.join("protect.jsonl"),
        30,
    );
    // add probes then capitals: 12 + 12 probes.
    let probes = std::fs::read_to_string(repo().join("datasets/probes/oss-nano.jsonl")).unwrap();
    let pick = |task: &str| {
        probes
            .lines()
            .filter(|l| l.contains(&format!("\"task\":\"{task}\"")))
            .take(12)
            .collect::<Vec<_>>()
            .join("\n")
    };
    std::fs::write(
        d.join("probes.jsonl"),
        format!("{}\n{}\n", pick("add"), pick("capital")),
    )
    .unwrap();
    head(&nano.join("heldout.jsonl"), &d.join("heldout.jsonl"), 6);
    let experiment = d.join("small.toml");
    std::fs::write(
        &experiment,
        format!(
            r#"
name = "small"
model = "{model}"
device = "cpu"
[trace]
calibration = ["{d}/calibration.jsonl"]
protect = ["{d}/protect.jsonl"]
[select]
strategies = ["frequency", "math-probe-aware"]
experts_per_layer = [8]
protect_tasks = ["add", "sub", "mul"]
[eval]
probes = ["{d}/probes.jsonl"]
heldout = ["{d}/heldout.jsonl"]
[report]
focus_tasks = ["add"]
"#,
            model = repo().join("models/oss-nano").display(),
            d = d.display()
        ),
    )
    .unwrap();

    let first = run(&experiment, d);
    assert_eq!(
        ran(&first),
        [
            "trace calibration",
            "trace protect",
            "select frequency 8",
            "select math-probe-aware 8",
            "eval full",
            "eval frequency-8",
            "eval math-probe-aware-8",
            "report"
        ]
    );
    let report = std::fs::read(d.join("report/report.md")).unwrap();
    let table = std::fs::read(d.join("report/quality-table.csv")).unwrap();
    assert!(String::from_utf8_lossy(&report).contains("| math-probe-aware 8 | 8 | 32 |"));

    // Nothing changed: only the report is rewritten, identically.
    assert_eq!(ran(&run(&experiment, d)), ["report"]);
    assert_eq!(std::fs::read(d.join("report/report.md")).unwrap(), report);
    assert_eq!(
        std::fs::read(d.join("report/quality-table.csv")).unwrap(),
        table
    );

    // A changed probe file: evaluation and report only.
    head(&d.join("probes.jsonl"), &d.join("probes.jsonl"), 20);
    assert_eq!(
        ran(&run(&experiment, d)),
        [
            "eval full",
            "eval frequency-8",
            "eval math-probe-aware-8",
            "report"
        ]
    );

    // A changed protect set: its trace, the strategy that reads it, that strategy's evaluation.
    head(&d.join("protect.jsonl"), &d.join("protect.jsonl"), 25);
    assert_eq!(
        ran(&run(&experiment, d)),
        [
            "trace protect",
            "select math-probe-aware 8",
            "eval math-probe-aware-8",
            "report"
        ]
    );

    // A changed calibration set: everything after it.
    head(
        &d.join("calibration.jsonl"),
        &d.join("calibration.jsonl"),
        50,
    );
    assert_eq!(
        ran(&run(&experiment, d)),
        [
            "trace calibration",
            "select frequency 8",
            "select math-probe-aware 8",
            "eval frequency-8",
            "eval math-probe-aware-8",
            "report"
        ]
    );
}

/// `write_checkpoints = true` evaluates written pruned checkpoints instead of the expert mask;
/// the two must give the same results, so the reports' tables are identical.
#[test]
fn written_checkpoints_and_the_expert_mask_give_the_same_table() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let nano = repo().join("datasets/nano");
    head(
        &nano.join("calibration/diverse.jsonl"),
        &d.join("calibration.jsonl"),
        40,
    );
    head(
        &repo().join("datasets/probes/oss-nano.jsonl"),
        &d.join("probes.jsonl"),
        30,
    );
    head(&nano.join("heldout.jsonl"), &d.join("heldout.jsonl"), 4);
    let experiment = |write: bool| {
        let path = d.join(format!("write-{write}.toml"));
        std::fs::write(
            &path,
            format!(
                r#"
model = "{model}"
device = "cpu"
[trace]
calibration = ["{d}/calibration.jsonl"]
[select]
strategies = ["reap"]
experts_per_layer = [12]
[eval]
probes = ["{d}/probes.jsonl"]
heldout = ["{d}/heldout.jsonl"]
write_checkpoints = {write}
"#,
                model = repo().join("models/oss-nano").display(),
                d = d.display()
            ),
        )
        .unwrap();
        let dir = d.join(format!("run-{write}"));
        run(&path, &dir);
        dir
    };
    let (masked, written) = (experiment(false), experiment(true));
    assert!(
        std::fs::read_dir(written.join("cache/checkpoints"))
            .unwrap()
            .next()
            .is_some(),
        "a pruned checkpoint was written"
    );
    let table = |dir: &Path| std::fs::read_to_string(dir.join("report/quality-table.csv")).unwrap();
    assert_eq!(table(&masked), table(&written));
    assert!(table(&masked).contains("reap 12,reap,12,48,"));
}
