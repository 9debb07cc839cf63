//! The benchmark's quick mode still runs end to end and writes a report that
//! parses. The figures themselves are not checked: benchmarks are not timing
//! asserts.

use std::{fs, process::Command};

#[test]
fn quick_benchmark_writes_a_report_that_parses() {
    let out = std::env::temp_dir().join(format!("jitgate-bench-smoke-{}", std::process::id()));
    let _ = fs::remove_dir_all(&out);
    let bench = jit_tests::bin_path("jit-bench");
    let run = Command::new(&bench)
        .arg("--quick")
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bench.display()));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "jit-bench --quick failed ({}):\n{stderr}",
        run.status
    );

    let json = fs::read_to_string(out.join("report.json")).expect("report.json is written");
    let report: serde_json::Value = serde_json::from_str(&json).expect("report.json parses");
    let rows = report["rows"].as_array().expect("report.json has rows");
    assert!(!rows.is_empty(), "the report has no rows:\n{stderr}");
    for row in rows {
        assert!(
            row["name"].is_string() && row["unit"].is_string() && row["method"].is_string(),
            "{row}"
        );
    }
    assert!(
        report["machine"]["cores"].as_u64().is_some_and(|c| c > 0),
        "{report}"
    );
    assert!(report["quick"].as_bool() == Some(true));
    let md = fs::read_to_string(out.join("report.md")).expect("report.md is written");
    assert!(
        md.contains("| section | figure |"),
        "report.md has no summary table"
    );
    for svg in ["cost_vs_grants.svg", "flood.svg"] {
        let text = fs::read_to_string(out.join(svg)).unwrap_or_else(|e| panic!("{svg}: {e}"));
        assert!(text.contains("<svg"), "{svg} is not an SVG");
    }
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("| section | figure |"),
        "no summary table printed:\n{stdout}"
    );
    let _ = fs::remove_dir_all(&out);
}
