//! End to end, the operator's side: diagnostics, detach, policy reload,
//! denied-attempt summaries and metrics scraped by a real Prometheus.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use jit_tests::{
    agent::{echo_lab, lab_policy, wait_for, Agent, ALICE, ROOT, TCP_PORT, UDP_PORT},
    http,
    lab::{Lab, V4},
};

const SHORT: Duration = Duration::from_millis(400);

#[test]
fn xdp_diagnostics_reach_the_agent_log_at_debug_level_only() {
    let (lab, scratch) = echo_lab();
    let policy = lab_policy(&lab, scratch.path(), "");
    let quiet = Agent::start(&lab, scratch.path(), &policy);
    assert!(!lab.tcp_connect(V4.client_a, V4.server_protected, TCP_PORT, SHORT));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !quiet.log_text().contains("jitgate drop"),
        "diagnostics at info level:\n{}",
        quiet.log_text()
    );
    drop(quiet);

    let (lab, scratch) = self::echo_lab();
    let policy = lab_policy(&lab, scratch.path(), "");
    let loud = Agent::start_with_env(&lab, scratch.path(), &policy, &[("RUST_LOG", "debug")]);
    assert!(!lab.tcp_connect(V4.client_a, V4.server_protected, TCP_PORT, SHORT));
    wait_for(
        "a diagnostic line from the XDP program",
        Duration::from_secs(5),
        || loud.log_text().contains("jitgate drop"),
    );
}

#[test]
fn detach_removes_the_gate_and_its_pins() {
    let (lab, scratch) = echo_lab();
    let policy = lab_policy(&lab, scratch.path(), "");
    let mut agent = Agent::start(&lab, scratch.path(), &policy);
    assert!(!lab.tcp_connect(V4.client_a, V4.server_protected, TCP_PORT, SHORT));
    agent.stop();
    // A clean stop leaves the gate enforcing.
    assert!(
        !lab.tcp_connect(V4.client_a, V4.server_protected, TCP_PORT, SHORT),
        "stopping the agent opened the gate"
    );
    let out = Command::new(jit_tests::bin_path("jit-agent"))
        .args(["detach", "--pin-dir"])
        .arg(agent.pin_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !agent.pin_dir().join("JG_GRANTS").exists(),
        "map pins left behind"
    );
    assert!(
        lab.tcp_connect(V4.client_a, V4.server_protected, TCP_PORT, SHORT * 5),
        "traffic still blocked after detach"
    );
}

#[test]
fn policy_reload_refuses_invalid_policy_and_revokes_what_is_no_longer_allowed() {
    let (lab, scratch) = echo_lab();
    let policy = lab_policy(&lab, scratch.path(), "");
    let agent = Agent::start(&lab, scratch.path(), &policy);
    let (a, srv) = (V4.client_a, V4.server_protected);
    let udp = agent.grant("alice", "srv-udp", a, "10m");
    let tcp = agent.grant("alice", "srv-tcp", a, "10m");
    assert!(lab.udp_request(a, srv, UDP_PORT, SHORT * 5));

    // An invalid policy is refused with its errors; the old one stays.
    std::fs::write(
        agent.policy_path(),
        format!("{policy}\n[roles.broken]\ntargets = [\"nope\"]\n"),
    )
    .unwrap();
    let out = agent.jitctl(ROOT, &["policy", "reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("nope") && err.contains("policy.toml:"),
        "{err}"
    );
    assert!(
        lab.udp_request(a, srv, UDP_PORT, SHORT * 5),
        "a refused reload changed enforcement"
    );
    // Only admins reload.
    assert_eq!(
        agent.jitctl(ALICE, &["policy", "reload"]).status.code(),
        Some(3)
    );

    // A valid policy without srv-udp in ops: SIGHUP revokes the UDP grant.
    let narrowed = policy.replace(
        r#"targets = ["srv-tcp", "srv-udp", "srv-ping", "srv-ping6"]"#,
        r#"targets = ["srv-tcp", "srv-ping", "srv-ping6"]"#,
    );
    assert_ne!(narrowed, policy);
    std::fs::write(agent.policy_path(), narrowed).unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for(
        "the UDP grant to be revoked",
        Duration::from_secs(5),
        || agent.jitctl_json(ROOT, &["show", &udp.to_string()])["data"]["state"] == "revoked",
    );
    assert!(
        !lab.udp_request(a, srv, UDP_PORT, SHORT),
        "revoked by reload but still passing"
    );
    assert_eq!(
        agent.jitctl_json(ROOT, &["show", &tcp.to_string()])["data"]["state"],
        "active"
    );
    assert!(lab.tcp_connect(a, srv, TCP_PORT, SHORT * 5));
    let tail = agent.jitctl_ok(ROOT, &["audit", "tail", "-n", "50"]);
    assert!(
        tail.contains("\"policy_reload_refused\"") && tail.contains("\"policy_reloaded\""),
        "{tail}"
    );
    assert!(tail.contains("\"revoked\""), "{tail}");
}

#[test]
fn denied_attempts_are_summarized_per_minute_in_the_audit_log() {
    let (lab, scratch) = echo_lab();
    let policy = lab_policy(&lab, scratch.path(), "");
    let mut agent = Agent::start(&lab, scratch.path(), &policy);
    for _ in 0..5 {
        assert!(!lab.tcp_connect(
            V4.client_a,
            V4.server_protected,
            TCP_PORT,
            Duration::from_millis(100)
        ));
    }
    std::thread::sleep(Duration::from_millis(300));
    agent.stop();
    let log = std::fs::read_to_string(scratch.path().join("state/audit.jsonl")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("\"denied_attempts\""))
        .unwrap_or_else(|| panic!("no denied summary in:\n{log}"));
    assert!(
        line.contains(&V4.client_a.to_string()) && line.contains(&V4.server_protected.to_string()),
        "{line}"
    );
}

fn metrics_text(lab: &Lab) -> String {
    let addr: SocketAddr = "127.0.0.1:9477".parse().unwrap();
    let (status, body) = http::get(lab.gate_ns(), addr, "/metrics").expect("scraping the agent");
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn metrics_pass_promtool_and_a_real_prometheus_counts_active_grants() {
    let (lab, scratch) = echo_lab();
    let policy = lab_policy(&lab, scratch.path(), "");
    let agent = Agent::start(&lab, scratch.path(), &policy);
    agent.grant("alice", "srv-tcp", V4.client_a, "10m");
    agent.grant("alice", "srv-udp", V4.client_a, "10m");
    assert!(!lab.tcp_connect(V4.client_b, V4.server_protected, TCP_PORT, SHORT));
    let text = metrics_text(&lab);
    for name in [
        "jitgate_packets_total",
        "jitgate_bytes_total",
        "jitgate_active_grants 2",
        "jitgate_pending_requests 0",
        "jitgate_grant_transitions_total",
        "jitgate_denied_attempts_total",
        "jitgate_map_capacity",
        "jitgate_map_entries",
        "jitgate_expiry_lag_seconds",
        "jitgate_build_info",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    assert!(text.contains(r#"reason="no_grant""#), "{text}");

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed");
    use std::io::Write as _;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus in the gate namespace scrapes the agent.
    let dir = scratch.path().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: jitgate\n    static_configs:\n      - targets: ['127.0.0.1:9477']\n",
    )
    .unwrap();
    let mut prom = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.gate_ns()))
        .arg("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:9090")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).unwrap())
        .spawn()
        .expect("prometheus (Debian package) is installed");
    let api: SocketAddr = "127.0.0.1:9090".parse().unwrap();
    let mut answer = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut found = false;
    while Instant::now() < deadline {
        if let Ok((200, body)) = http::get(
            lab.gate_ns(),
            api,
            "/api/v1/query?query=jitgate_active_grants",
        ) {
            answer = body;
            let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
            if let Some(value) = v["data"]["result"][0]["value"][1].as_str() {
                assert_eq!(value, "2", "{answer}");
                found = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = prom.kill();
    let _ = prom.wait();
    assert!(
        found,
        "Prometheus never reported jitgate_active_grants: {answer}\n{}",
        std::fs::read_to_string(dir.join("log")).unwrap_or_default()
    );
}
