//! A full state directory: operations fail with a clear error, nothing is
//! half-applied, and enforcement is unchanged.

use std::{process::Command, time::Duration};

use jit_tests::{
    agent::{lab_policy, Agent, Scratch, ALICE, ROOT, TCP_PORT, UDP_PORT},
    lab::{Lab, V4},
};

const SHORT: Duration = Duration::from_millis(400);

/// A small tmpfs for the state directory, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_state_disk_refuses_operations_and_leaves_enforcement_alone() {
    let lab = Lab::new().unwrap();
    lab.serve_tcp_echo(TCP_PORT).unwrap();
    lab.serve_udp_echo(UDP_PORT).unwrap();
    let scratch = Scratch::new(&lab);
    let state = scratch.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    assert!(Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=4m",
            "jitgate-test",
            state.to_str().unwrap()
        ])
        .status()
        .unwrap()
        .success());
    let _mount = Tmpfs(state.clone());
    let policy = lab_policy(&lab, scratch.path(), "");
    let agent = Agent::start(&lab, scratch.path(), &policy);
    let (a, srv) = (V4.client_a, V4.server_protected);
    let tcp = agent.grant("alice", "srv-tcp", a, "10m");
    assert!(lab.tcp_connect(a, srv, TCP_PORT, SHORT * 5));

    // Fill the disk.
    let filler = state.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .output();

    // Small writes can still land in the slack of files' last pages: make
    // pending requests until the disk refuses one.
    let before = agent.jitctl_json(ROOT, &["list", "--all"])["data"]
        .as_array()
        .unwrap()
        .len();
    let mut refused = None;
    for i in 0..200 {
        let reason = format!("CHG-{i} {}", "x".repeat(400));
        let out = agent.jitctl(
            jit_tests::agent::CAROL,
            &["request", "srv-tcp", "--reason", &reason],
        );
        if !out.status.success() {
            refused = Some((i, out));
            break;
        }
        // Withdraw it again so the next request is not a duplicate.
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let id: String = text
            .split("pending as #")
            .nth(1)
            .unwrap()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let out = agent.jitctl(jit_tests::agent::CAROL, &["cancel", &id]);
        if !out.status.success() {
            refused = Some((i, out));
            break;
        }
    }
    let (_, out) = refused.expect("the full disk never refused an operation");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "refused on a full disk: {err}");
    assert!(err.contains("nothing was changed"), "{err}");
    let pending_now: Vec<serde_json::Value> = agent.jitctl_json(ROOT, &["list", "--all"])["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["state"] == "pending")
        .cloned()
        .collect();
    assert!(
        pending_now.len() <= 1,
        "half-applied requests: {pending_now:?}"
    );
    let _ = before;

    let from = a.to_string();
    let out = agent.jitctl(
        ROOT,
        &[
            "grant", "alice", "srv-udp", "--from", &from, "--for", "10m", "--reason", "x",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "grant on a full disk: {err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(
        !lab.udp_request(a, srv, UDP_PORT, SHORT),
        "a refused grant opened access"
    );

    let out = agent.jitctl(ROOT, &["revoke", &tcp.to_string(), "--reason", "x"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "revoke on a full disk: {err}");
    assert!(
        lab.tcp_connect(a, srv, TCP_PORT, SHORT * 5),
        "a refused revoke changed enforcement"
    );
    assert_eq!(
        agent.jitctl_json(ALICE, &["show", &tcp.to_string()])["data"]["state"],
        "active"
    );

    // Room again: operations work, and the audit log still verifies.
    std::fs::remove_file(&filler).unwrap();
    agent.jitctl_ok(
        ROOT,
        &["revoke", &tcp.to_string(), "--reason", "room again"],
    );
    assert!(!lab.tcp_connect(a, srv, TCP_PORT, SHORT));
    let verify = agent.jitctl_ok(ROOT, &["audit", "verify"]);
    assert!(verify.contains("intact"), "{verify}");
}
