//! `cargo xtask test`: the whole test suite in one `cargo test`, unit tests of the
//! default members plus the privileged jit-tests crate, then a summary.

use std::{
    env,
    io::{BufRead as _, BufReader},
    process::{ExitCode, Stdio},
    thread,
    time::Instant,
};

use anyhow::{Context as _, Result};

use crate::{build, command, setup, workspace};

/// Default cap on parallel tests: each end-to-end test builds its own namespaces
/// and starts an agent, and a 2-core machine gains nothing past a few at once.
const DEFAULT_TEST_THREADS: usize = 4;

pub fn test(args: &[String]) -> Result<ExitCode> {
    setup::setup()?;
    build::build()?;

    let threads = match env::var("JITGATE_TEST_THREADS") {
        Ok(n) => n
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .with_context(|| format!("JITGATE_TEST_THREADS={n:?} is not a positive number"))?,
        Err(_) => thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(DEFAULT_TEST_THREADS),
    };
    let bin_dir = workspace::release_dir()?;
    command::step(format!(
        "running the test suite ({threads} test threads, binaries from {})",
        bin_dir.display()
    ));

    let started = Instant::now();
    let mut cargo = workspace::cargo();
    cargo
        .args(["test", "--release", "--workspace", "--no-fail-fast"])
        .args(workspace::HOST_EXCLUDES)
        .args(args)
        .env("JITGATE_BIN_DIR", &bin_dir)
        .env("RUST_TEST_THREADS", threads.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    eprintln!("$ {}", command::display(&cargo));
    let mut child = cargo.spawn().context("starting cargo test")?;

    // Echo libtest's output as it comes and tally it for the summary.
    let mut tally = Tally::default();
    let stdout = child.stdout.take().context("cargo test has no stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        tally.read(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;

    tally.print(started.elapsed().as_secs_f64(), status.success());
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Totals over every test binary's `test result:` line.
#[derive(Default)]
struct Tally {
    binaries: usize,
    passed: usize,
    failed: usize,
    ignored: usize,
    failures: Vec<String>,
}

impl Tally {
    fn read(&mut self, line: &str) {
        if let Some(result) = line.strip_prefix("test result: ") {
            self.binaries += 1;
            for part in result.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(count)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(count) = count.parse::<usize>() else {
                    continue;
                };
                match what {
                    "passed" => self.passed += count,
                    "failed" => self.failed += count,
                    "ignored" => self.ignored += count,
                    _ => {}
                }
            }
        } else if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.strip_suffix(" ... FAILED"))
        {
            self.failures.push(name.to_owned());
        }
    }

    fn print(&self, seconds: f64, success: bool) {
        eprintln!();
        eprintln!("==> test summary ({seconds:.0}s)");
        eprintln!(
            "    {} passed, {} failed, {} ignored, in {} test binaries",
            self.passed, self.failed, self.ignored, self.binaries
        );
        for name in &self.failures {
            eprintln!("    FAILED: {name}");
        }
        if success {
            eprintln!("    result: ok");
        } else if self.failures.is_empty() {
            eprintln!(
                "    result: FAILED (cargo test failed outside a test: see the errors above)"
            );
        } else {
            eprintln!("    result: FAILED");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn tally_adds_up_every_binary_and_names_failures() {
        let mut tally = Tally::default();
        for line in [
            "test lab::tests::a ... ok",
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s",
            "test expiry_blocks_within_100ms ... FAILED",
            "test result: FAILED. 5 passed; 1 failed; 0 ignored; 0 measured; 2 filtered out; finished in 1.20s",
        ] {
            tally.read(line);
        }
        assert_eq!(
            (tally.binaries, tally.passed, tally.failed, tally.ignored),
            (2, 8, 1, 1)
        );
        assert_eq!(tally.failures, ["expiry_blocks_within_100ms"]);
    }
}
