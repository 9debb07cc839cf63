//! `jit-bench`: jitgate's benchmarks (issue 4). Writes `target/bench/report.md`,
//! `report.json` and SVG plots, and prints the summary table.
//!
//! ```text
//! jit-bench [--quick] [--only kernel,nft,control] [--out DIR]
//! ```
//! `--quick` (or `JITGATE_BENCH_QUICK=1`) is the short smoke run for CI.

use std::{path::PathBuf, process::ExitCode, time::Instant};

use anyhow::{bail, Context as _, Result};
use jit_tests::bench::{control, kernel, nft, report::Report};

struct Args {
    quick: bool,
    only: Vec<String>,
    out: PathBuf,
}

const SECTIONS: [&str; 3] = ["kernel", "nft", "control"];

fn parse_args() -> Result<Args> {
    let mut args = Args {
        quick: std::env::var("JITGATE_BENCH_QUICK")
            .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")),
        only: SECTIONS.iter().map(|s| s.to_string()).collect(),
        out: default_out(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--only" => {
                let v = it
                    .next()
                    .context("--only needs a list, e.g. kernel,control")?;
                args.only = v.split(',').map(|s| s.trim().to_owned()).collect();
                for s in &args.only {
                    if !SECTIONS.contains(&s.as_str()) {
                        bail!("unknown section `{s}` (known: {})", SECTIONS.join(", "));
                    }
                }
            }
            "--out" => args.out = PathBuf::from(it.next().context("--out needs a directory")?),
            "-h" | "--help" => {
                println!("jit-bench [--quick] [--only kernel,nft,control] [--out DIR]");
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}` (try --help)"),
        }
    }
    Ok(args)
}

/// `target/bench` of the workspace: beside the release directory this binary
/// runs from (`target/release/jit-bench`), else under the current directory.
fn default_out() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(|t| t.join("bench")))
        .filter(|dir| {
            dir.parent()
                .is_some_and(|t| t.join("release").is_dir() || t.join("debug").is_dir())
        })
        .unwrap_or_else(|| PathBuf::from("target/bench"))
}

fn run() -> Result<()> {
    let args = parse_args()?;
    jit_tests::lab::require_root()?;
    let started = Instant::now();
    // Other work on the machine preempts the measurements; a higher priority
    // reduces that. Failing to get it is fine.
    // SAFETY: setpriority has no memory-safety preconditions.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, -10);
    }
    let mut report = Report::new(args.quick);
    report
        .notes
        .push(format!("Load average at the start: {}.", loadavg()));
    eprintln!(
        "jit-bench: {} mode on {}, writing to {}",
        if args.quick { "quick" } else { "full" },
        report.machine.short(),
        args.out.display()
    );
    let want = |s: &str| args.only.iter().any(|o| o == s);
    if want("kernel") {
        eprintln!("§1 per-packet cost (BPF_PROG_TEST_RUN)");
        let plan = if args.quick {
            kernel::KernelPlan::quick()
        } else {
            kernel::KernelPlan::full()
        };
        if let Err(e) = kernel::run(&mut report, &plan) {
            report
                .missing
                .push(format!("§1 per-packet cost failed: {e:#}"));
        }
    } else {
        report
            .missing
            .push("§1 per-packet cost: not selected (--only)".into());
    }
    if want("control") {
        eprintln!("§3 control plane (jit-agent)");
        let plan = if args.quick {
            control::ControlPlan::quick()
        } else {
            control::ControlPlan::full()
        };
        if let Err(e) = control::run(&mut report, &plan) {
            report
                .missing
                .push(format!("§3 control plane failed part-way: {e:#}"));
        }
    } else {
        report
            .missing
            .push("§3 control plane: not selected (--only)".into());
    }
    if want("nft") {
        eprintln!("§2 XDP against nftables (flood, iperf3)");
        let plan = if args.quick {
            nft::NftPlan::quick()
        } else {
            nft::NftPlan::full()
        };
        if let Err(e) = nft::run(&mut report, &plan) {
            report
                .missing
                .push(format!("§2 nftables comparison failed: {e:#}"));
        }
    } else {
        report
            .missing
            .push("§2 nftables comparison: not selected (--only)".into());
    }
    report.notes.push(format!(
        "Load average at the end: {}. The whole run took {:.0} s.",
        loadavg(),
        started.elapsed().as_secs_f64()
    ));
    report.write(&args.out)?;
    println!("{}", report.summary_table());
    for m in &report.missing {
        println!("not measured: {m}");
    }
    println!("report: {}", args.out.join("report.md").display());
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jit-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
