//! The benchmark report: every figure raw and as a ratio against the baseline
//! measured in the same run, written as `report.md`, `report.json` and SVG
//! plots, and printed as a summary table.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

/// The machine the figures come from.
#[derive(Clone, Debug)]
pub struct Machine {
    pub cores: usize,
    pub kernel: String,
    pub cpu: String,
    pub memory_gib: f64,
}

impl Machine {
    pub fn detect() -> Machine {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let memory_gib = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
        Machine {
            cores,
            kernel,
            cpu,
            memory_gib,
        }
    }

    /// "2 cores, Linux 6.18.44", the per-row machine column.
    pub fn short(&self) -> String {
        format!("{} cores, Linux {}", self.cores, self.kernel)
    }
}

/// A target of issue 4 and whether this run met it.
#[derive(Clone, Debug)]
pub struct Target {
    /// As the issue says it, e.g. "≤ 3× trivial".
    pub text: String,
    pub met: bool,
}

/// One measured figure.
#[derive(Clone, Debug)]
pub struct Row {
    /// Report section: "kernel", "nftables", "control".
    pub section: &'static str,
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    /// The same-run baseline: its name and value. The ratio is value / baseline.
    pub baseline: Option<(String, f64)>,
    pub target: Option<Target>,
    /// How the figure was measured.
    pub method: String,
    /// What limits the figure, said where its target is missed.
    pub limit: String,
}

impl Row {
    pub fn new(
        section: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) -> Row {
        Row {
            section,
            name: name.into(),
            value,
            unit,
            baseline: None,
            target: None,
            method: String::new(),
            limit: String::new(),
        }
    }

    pub fn baseline(mut self, name: impl Into<String>, value: f64) -> Row {
        self.baseline = Some((name.into(), value));
        self
    }

    pub fn target(mut self, text: impl Into<String>, met: bool) -> Row {
        self.target = Some(Target {
            text: text.into(),
            met,
        });
        self
    }

    pub fn method(mut self, method: impl Into<String>) -> Row {
        self.method = method.into();
        self
    }

    pub fn limit(mut self, limit: impl Into<String>) -> Row {
        self.limit = limit.into();
        self
    }

    pub fn ratio(&self) -> Option<f64> {
        // A ratio of a negative figure (a packet through before the answer)
        // means nothing, so none is given.
        self.baseline
            .as_ref()
            .filter(|(_, b)| *b > 0.0 && b.is_finite() && self.value >= 0.0)
            .map(|(_, b)| self.value / b)
    }
}

/// One line of a plot: a label and its points.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Everything one run measured.
#[derive(Debug)]
pub struct Report {
    pub machine: Machine,
    pub quick: bool,
    pub started: String,
    pub rows: Vec<Row>,
    /// Parts that were not measured, and why.
    pub missing: Vec<String>,
    /// Caveats a reader needs to read the figures right.
    pub notes: Vec<String>,
    /// Per-packet cost (ns) against grant count, one series per path.
    pub cost_series: Vec<Series>,
    /// Flood results by mode: (mode, dropped pps, softirq ns per dropped packet).
    pub flood: Vec<(String, f64, f64)>,
}

impl Report {
    pub fn new(quick: bool) -> Report {
        Report {
            machine: Machine::detect(),
            quick,
            started: now_utc(),
            rows: Vec::new(),
            missing: Vec::new(),
            notes: Vec::new(),
            cost_series: Vec::new(),
            flood: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "section": r.section,
                    "name": r.name,
                    "value": finite(r.value),
                    "unit": r.unit,
                    "baseline": r.baseline.as_ref().map(|(n, v)| json!({"name": n, "value": finite(*v)})),
                    "ratio": r.ratio().map(finite),
                    "target": r.target.as_ref().map(|t| json!({"text": t.text, "met": t.met})),
                    "machine": self.machine.short(),
                    "method": r.method,
                    "limit": r.limit,
                })
            })
            .collect();
        json!({
            "machine": {
                "cores": self.machine.cores,
                "kernel": self.machine.kernel,
                "cpu": self.machine.cpu,
                "memory_gib": finite(self.machine.memory_gib),
            },
            "quick": self.quick,
            "started": self.started,
            "rows": rows,
            "missing": self.missing,
            "notes": self.notes,
            "cost_series": self.cost_series.iter().map(|s| json!({
                "label": s.label,
                "points": s.points.iter().map(|(x, y)| json!([finite(*x), finite(*y)])).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "flood": self.flood.iter().map(|(m, pps, ns)| json!({
                "mode": m, "dropped_pps": finite(*pps), "softirq_ns_per_packet": finite(*ns),
            })).collect::<Vec<_>>(),
        })
    }

    /// The summary table: every row with its ratio and target.
    pub fn summary_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| section | figure | value | baseline (same run) | ratio | target | met |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for r in &self.rows {
            let baseline = r.baseline.as_ref().map_or("—".into(), |(n, v)| {
                format!("{n}: {} {}", num(*v), r.unit)
            });
            let ratio = r.ratio().map_or("—".into(), |x| format!("{x:.3}×"));
            let (target, met) = r.target.as_ref().map_or(("—".into(), "—"), |t| {
                (t.text.clone(), if t.met { "yes" } else { "**no**" })
            });
            let _ = writeln!(
                out,
                "| {} | {} | {} {} | {} | {} | {} | {} |",
                r.section,
                r.name,
                num(r.value),
                r.unit,
                baseline,
                ratio,
                target,
                met
            );
        }
        out
    }

    pub fn to_markdown(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(out, "# jitgate benchmark report\n");
        let _ = writeln!(
            out,
            "Run started {} on {} cores ({}), Linux {}, {:.1} GiB of memory{}.\n",
            self.started,
            m.cores,
            m.cpu,
            m.kernel,
            m.memory_gib,
            if self.quick {
                "; **quick smoke mode**: small counts and short floods, not comparable with a full run"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "Every figure is given raw and as a ratio against its baseline measured in the same \
             run; the ratio is value / baseline. These are measurements, not asserts.\n"
        );
        let _ = writeln!(out, "## Summary\n");
        out.push_str(&self.summary_table());
        if !self.missing.is_empty() {
            let _ = writeln!(out, "\n## Not measured\n");
            for m in &self.missing {
                let _ = writeln!(out, "- {m}");
            }
        }
        let missed: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| r.target.as_ref().is_some_and(|t| !t.met))
            .collect();
        if !missed.is_empty() {
            let _ = writeln!(out, "\n## Targets missed\n");
            for r in missed {
                let t = r.target.as_ref().expect("filtered on targets");
                let _ = writeln!(
                    out,
                    "- {} / {}: measured {} {}{} against target {}.{}",
                    r.section,
                    r.name,
                    num(r.value),
                    r.unit,
                    r.ratio().map_or(String::new(), |x| format!(" ({x:.3}×)")),
                    t.text,
                    if r.limit.is_empty() {
                        String::new()
                    } else {
                        format!(" What limits it: {}", r.limit)
                    }
                );
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        let _ = writeln!(out, "\n## Plots\n");
        let _ = writeln!(
            out,
            "![per-packet cost against grant count](cost_vs_grants.svg)\n"
        );
        let _ = writeln!(out, "![drop rate and CPU per packet](flood.svg)\n");
        let _ = writeln!(out, "## Method and machine per row\n");
        let _ = writeln!(out, "| section | figure | machine | method |");
        let _ = writeln!(out, "|---|---|---|---|");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                r.section,
                r.name,
                m.short(),
                r.method.replace('|', "\\|")
            );
        }
        out
    }

    /// Writes report.md, report.json and the plots into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(&self.to_json()).context("encoding the report")?;
        fs::write(dir.join("report.json"), json).context("writing report.json")?;
        fs::write(dir.join("report.md"), self.to_markdown()).context("writing report.md")?;
        super::plot::cost_vs_grants(&dir.join("cost_vs_grants.svg"), &self.cost_series)
            .context("plotting cost_vs_grants.svg")?;
        super::plot::flood(&dir.join("flood.svg"), &self.flood).context("plotting flood.svg")?;
        Ok(())
    }
}

/// The current UTC time as `date` prints it, or the Unix time when `date` fails.
fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!("unix time {secs}")
        })
}

/// JSON has no NaN or infinity.
fn finite(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

/// A number with sensible precision for a table.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let a = x.abs();
    if a >= 1000.0 || x == x.trunc() {
        let mut s = format!("{:.0}", x);
        // Thousands separators make big counts readable.
        let neg = s.starts_with('-');
        if neg {
            s.remove(0);
        }
        let mut grouped = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        if neg {
            grouped.insert(0, '-');
        }
        grouped
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 0.1 {
        format!("{x:.2}")
    } else {
        format!("{x:.4}")
    }
}
