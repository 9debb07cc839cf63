//! Faults under a running agent: a gated interface removed and re-created,
//! and the gate's bpffs pins removed.

use std::{process::Command, time::Duration};

use jit_tests::{
    agent::{lab_policy, wait_for, Agent, Scratch, TCP_PORT, UDP_PORT},
    lab::{Lab, V4},
};

const SHORT: Duration = Duration::from_millis(400);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn xdp_attached(ns: &str, dev: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", ns, "-d", "link", "show", dev])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

#[test]
fn a_removed_and_recreated_interface_is_gated_again() {
    let lab = Lab::new().unwrap();
    let scratch = Scratch::new(&lab);
    let gw = lab.gate_ns().to_owned();
    // A second gated interface, a veth pair inside the gate namespace.
    ip(&[
        "-n", &gw, "link", "add", "jgx0", "type", "veth", "peer", "name", "jgx1",
    ]);
    ip(&["-n", &gw, "link", "set", "jgx0", "up"]);
    ip(&["-n", &gw, "link", "set", "jgx1", "up"]);
    let policy = lab_policy(&lab, scratch.path(), "").replace(
        r#"interfaces = ["gate-in"]"#,
        r#"interfaces = ["gate-in", "jgx0"]"#,
    );
    let agent = Agent::start(&lab, scratch.path(), &policy);
    assert!(xdp_attached(&gw, "jgx0"));
    ip(&["-n", &gw, "link", "del", "jgx0"]);
    wait_for("the agent to notice", Duration::from_secs(5), || {
        agent.log_text().contains("disappeared")
    });
    ip(&[
        "-n", &gw, "link", "add", "jgx0", "type", "veth", "peer", "name", "jgx1",
    ]);
    ip(&["-n", &gw, "link", "set", "jgx0", "up"]);
    wait_for(
        "the gate on the re-created interface",
        Duration::from_secs(5),
        || xdp_attached(&gw, "jgx0"),
    );
    assert!(
        agent.log_text().contains("re-attached"),
        "{}",
        agent.log_text()
    );
    let tail = agent.jitctl_ok(0, &["audit", "tail", "-n", "20"]);
    assert!(
        tail.contains("interface_gone") && tail.contains("interface_reattached"),
        "{tail}"
    );
}

#[test]
fn removed_pins_are_restored_and_the_gate_outlives_the_agent_again() {
    let lab = Lab::new().unwrap();
    lab.serve_tcp_echo(TCP_PORT).unwrap();
    lab.serve_udp_echo(UDP_PORT).unwrap();
    let scratch = Scratch::new(&lab);
    let policy = lab_policy(&lab, scratch.path(), "");
    let mut agent = Agent::start(&lab, scratch.path(), &policy);
    agent.grant("alice", "srv-tcp", V4.client_a, "10m");
    // Someone removes every pin under the running agent.
    let dir = agent.pin_dir().to_owned();
    let links = dir.join("links");
    for entry in std::fs::read_dir(&links).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    for name in ["JG_GRANTS", "JG_ZONES", "JG_GSTATS", "JG_COUNTERS"] {
        std::fs::remove_file(dir.join(name)).unwrap();
    }
    // The gate never opened meanwhile: the agent holds the link.
    assert!(!lab.tcp_connect(V4.client_b, V4.server_protected, TCP_PORT, SHORT));
    wait_for("the pins to come back", Duration::from_secs(5), || {
        dir.join("JG_GRANTS").exists() && links.join("gate-in").exists()
    });
    assert!(
        agent.log_text().contains("restored"),
        "{}",
        agent.log_text()
    );
    // With the pins back, the gate outlives the agent again.
    agent.kill9();
    assert!(
        !lab.tcp_connect(V4.client_b, V4.server_protected, TCP_PORT, SHORT),
        "gate open after the agent died"
    );
    assert!(
        lab.tcp_connect(V4.client_a, V4.server_protected, TCP_PORT, SHORT * 5),
        "grant lost"
    );
    agent.start_again();
    assert!(
        lab.tcp_connect(V4.client_a, V4.server_protected, TCP_PORT, SHORT * 5),
        "grant lost after restart"
    );
}
