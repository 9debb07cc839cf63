//! jitctl's command line: every wrong, missing or conflicting argument is
//! refused before anything is sent, with a message that says what to fix and
//! a non-zero exit (clap's 2 for usage errors, the documented codes otherwise).

use std::{
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::{Command, Output},
};

const USAGE: i32 = 2;
const UNREACHABLE: i32 = 5;
const INVALID: i32 = 6;

/// A socket path nobody listens on, so a command that wrongly contacted an
/// agent would exit with UNREACHABLE instead of the code expected.
fn dead_socket(dir: &Path) -> PathBuf {
    dir.join("nobody-listens.sock")
}

fn jitctl(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    Command::new(env!("CARGO_BIN_EXE_jitctl"))
        .args(args)
        .env("JITGATE_SOCKET", dead_socket(dir.path()))
        .output()
        .expect("running jitctl")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs jitctl, expects `code`, and that stderr names every needle.
fn expect_failure(args: &[&str], code: i32, needles: &[&str]) -> String {
    let out = jitctl(args);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "jitctl {args:?}: expected exit {code}\nstdout: {stdout}\nstderr: {stderr}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "jitctl {args:?}: stderr does not mention {needle:?}:\n{stderr}"
        );
    }
    assert!(
        stdout.is_empty(),
        "jitctl {args:?}: errors belong on stderr, stdout had: {stdout}"
    );
    stderr
}

/// clap's usage errors all point at help, so the user knows where to look.
fn expect_usage(args: &[&str], needles: &[&str]) {
    let stderr = expect_failure(args, USAGE, needles);
    assert!(
        stderr.contains("error:"),
        "jitctl {args:?}: no error line:\n{stderr}"
    );
    assert!(
        stderr.contains("--help") || stderr.contains("Usage:"),
        "jitctl {args:?}: no pointer to usage or --help:\n{stderr}"
    );
}

#[test]
fn missing_positional_arguments_are_named() {
    expect_usage(&["request"], &["required", "<TARGET>"]);
    expect_usage(&["grant"], &["required", "<USER>", "<TARGET>"]);
    expect_usage(&["grant", "alice"], &["required", "<TARGET>"]);
    expect_usage(&["approve"], &["required", "<ID>"]);
    expect_usage(&["deny"], &["required", "<ID>"]);
    expect_usage(&["cancel"], &["required", "<ID>"]);
    expect_usage(&["revoke"], &["required", "<ID>"]);
    expect_usage(&["release"], &["required", "<ID>"]);
    expect_usage(&["show"], &["required", "<ID>"]);
    expect_usage(&["policy", "check"], &["required", "<PATH>"]);
    expect_usage(&["completions"], &["required", "<SHELL>"]);
}

#[test]
fn missing_options_and_option_values_are_named() {
    expect_usage(&["extend", "5"], &["required", "--by <DURATION>"]);
    expect_usage(
        &["extend", "5", "--by"],
        &["a value is required", "--by <DURATION>"],
    );
    expect_usage(
        &["request", "srv", "--for"],
        &["a value is required", "--for <DURATION>"],
    );
    expect_usage(
        &["request", "srv", "--from"],
        &["a value is required", "--from <ADDR>"],
    );
    expect_usage(
        &["grant", "alice", "srv", "--reason"],
        &["a value is required", "--reason"],
    );
    expect_usage(
        &["status", "--socket"],
        &["a value is required", "--socket"],
    );
    expect_usage(
        &["audit", "tail", "-n"],
        &["a value is required", "--lines"],
    );
}

#[test]
fn missing_subcommands_list_the_choices() {
    expect_usage(&[], &["Usage:", "status", "request"]);
    expect_usage(&["policy"], &["Usage:", "check", "reload", "show"]);
    expect_usage(&["audit"], &["Usage:", "tail", "verify"]);
}

#[test]
fn malformed_values_say_what_was_wrong() {
    expect_usage(
        &["approve", "notanumber"],
        &["invalid value 'notanumber'", "<ID>"],
    );
    expect_usage(&["show", "1.5"], &["invalid value '1.5'", "<ID>"]);
    expect_usage(&["revoke", ""], &["invalid value ''", "<ID>"]);
    // One past u64::MAX: ids are u64 and must not wrap.
    expect_usage(
        &["release", "18446744073709551616"],
        &["invalid value '18446744073709551616'", "too large"],
    );
    // A negative id looks like an option; either way it is refused.
    expect_usage(&["cancel", "-1"], &["-1"]);
    expect_usage(
        &["audit", "tail", "-n", "lots"],
        &["invalid value 'lots'", "--lines"],
    );
    expect_usage(&["audit", "tail", "-n", "-5"], &["-5"]);
    expect_usage(
        &["completions", "cmd.exe"],
        &["invalid value 'cmd.exe'", "possible values", "bash"],
    );
}

#[test]
fn unknown_arguments_and_subcommands_are_refused_with_a_suggestion() {
    expect_usage(&["list", "--bogus"], &["unexpected argument '--bogus'"]);
    expect_usage(&["status", "extra"], &["unexpected argument 'extra'"]);
    expect_usage(&["approve", "1", "2"], &["unexpected argument '2'"]);
    expect_usage(&["frobnicate"], &["unrecognized subcommand 'frobnicate'"]);
    expect_usage(&["stauts"], &["unrecognized subcommand 'stauts'", "status"]);
    expect_usage(
        &["policy", "relaod"],
        &["unrecognized subcommand 'relaod'", "reload"],
    );
    expect_usage(&["list", "--al"], &["unexpected argument '--al'", "--all"]);
    // An option of another subcommand is not silently accepted.
    expect_usage(&["status", "--by", "5m"], &["unexpected argument '--by'"]);
}

#[test]
fn conflicting_repeats_are_refused() {
    expect_usage(
        &["list", "--all", "--all"],
        &["'--all' cannot be used multiple times"],
    );
    expect_usage(
        &["extend", "5", "--by", "5m", "--by", "10m"],
        &["'--by <DURATION>' cannot be used multiple times"],
    );
    expect_usage(
        &["audit", "verify", "--file", "a", "--file", "b"],
        &["'--file <FILE>' cannot be used multiple times"],
    );
    expect_usage(
        &["request", "srv", "--for", "5m", "--for", "10m"],
        &["'--for <DURATION>' cannot be used multiple times"],
    );
}

#[test]
fn jit_agent_refuses_conflicting_and_missing_arguments_too() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_jit-agent"))
            .args(args)
            .output()
            .expect("running jit-agent");
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(USAGE),
            "jit-agent {args:?}: {stdout}{stderr}"
        );
        stderr
    };
    let stderr = run(&[
        "detach",
        "--policy",
        "/etc/jitgate",
        "--pin-dir",
        "/sys/fs/bpf/x",
    ]);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
    let stderr = run(&["run", "--policy"]);
    assert!(stderr.contains("a value is required"), "{stderr}");
    let stderr = run(&["serve"]);
    assert!(
        stderr.contains("unrecognized subcommand 'serve'"),
        "{stderr}"
    );
    let stderr = run(&[]);
    assert!(stderr.contains("Usage:"), "{stderr}");
}

#[test]
fn policy_check_of_a_missing_path_names_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such-policy.toml");
    let missing = missing.to_str().expect("utf-8 temp path");
    let stderr = expect_failure(&["policy", "check", missing], INVALID, &[missing]);
    assert!(stderr.contains("policy is invalid"), "{stderr}");
    expect_failure(
        &["policy", "check", "/nonexistent"],
        INVALID,
        &["/nonexistent"],
    );
}

#[test]
fn audit_verify_of_a_missing_file_names_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("audit.log");
    let missing = missing.to_str().expect("utf-8 temp path");
    expect_failure(&["audit", "verify", "--file", missing], INVALID, &[missing]);
}

/// Runs `args` against `socket` given both ways (flag and environment).
fn expect_unreachable(socket: &Path, args: &[&str]) {
    let shown = socket.display().to_string();
    let needles = [
        shown.as_str(),
        "JITGATE_SOCKET",
        "--socket",
        "is jit-agent running?",
    ];
    let mut flag_args = vec!["--socket", shown.as_str()];
    flag_args.extend_from_slice(args);
    expect_failure(&flag_args, UNREACHABLE, &needles);

    let out = Command::new(env!("CARGO_BIN_EXE_jitctl"))
        .args(args)
        .env("JITGATE_SOCKET", socket)
        .output()
        .expect("running jitctl");
    let (_, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(UNREACHABLE),
        "JITGATE_SOCKET={shown} jitctl {args:?}: {stderr}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "JITGATE_SOCKET={shown}: no {needle:?} in {stderr}"
        );
    }
}

#[test]
fn an_unreachable_socket_names_the_socket_and_how_to_change_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    // No file at all.
    expect_unreachable(&dir.path().join("missing.sock"), &["status"]);
    // A socket left behind by an agent that is gone: connection refused.
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).expect("binding a socket"));
    expect_unreachable(&stale, &["list"]);
    // Not a socket at all.
    let plain = dir.path().join("plain-file");
    std::fs::write(&plain, b"not a socket").expect("writing a plain file");
    expect_unreachable(&plain, &["request", "srv-tcp"]);
    // `watch` connects on its own path.
    expect_unreachable(&dir.path().join("missing.sock"), &["watch"]);
}

#[test]
fn help_and_version_succeed_and_document_exit_codes() {
    let out = jitctl(&["--help"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout.contains("Exit codes:") && stdout.contains("5  cannot reach the agent"),
        "{stdout}"
    );
    let out = jitctl(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out).0.starts_with("jitctl "), "{:?}", text(&out));
    let out = jitctl(&["extend", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out).0.contains("--by <DURATION>"));
}
