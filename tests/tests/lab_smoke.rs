//! The lab itself, with no gate: every client address reaches every server address
//! over ping, TCP and UDP, IPv4 and IPv6, and dropping the lab removes everything.

use std::{path::Path, process::Command, time::Duration};

use jit_tests::lab::{Lab, FAMILIES, GATE_IN_IF, GATE_OUT_IF};

const TCP_PORT: u16 = 7001;
const UDP_PORT: u16 = 7002;
const TIMEOUT: Duration = Duration::from_secs(3);

#[test]
fn lab_carries_ping_tcp_and_udp_between_all_addresses_and_cleans_up() {
    let root_before = root_namespace_state();
    let lab = Lab::new().expect("building the lab");
    assert_eq!(
        root_namespace_state(),
        root_before,
        "building a lab changed the root namespace"
    );
    let sysctl = |ns: &str, key: &str| lab.exec_ok(ns, &["cat", &format!("/proc/sys/{key}")]);
    assert_eq!(sysctl(lab.gate_ns(), "net/ipv4/ip_forward").trim(), "1");
    assert_eq!(
        sysctl(lab.gate_ns(), "net/ipv6/conf/all/forwarding").trim(),
        "1"
    );
    assert_eq!(
        sysctl(lab.client_ns(), "net/ipv6/conf/cli0/accept_dad").trim(),
        "0"
    );
    let gate_links = lab.exec_ok(lab.gate_ns(), &["ip", "-o", "link"]);
    assert!(
        gate_links.contains(GATE_IN_IF) && gate_links.contains(GATE_OUT_IF),
        "{gate_links}"
    );
    lab.serve_tcp_echo(TCP_PORT)
        .expect("starting the TCP echo server");
    lab.serve_udp_echo(UDP_PORT)
        .expect("starting the UDP echo server");

    for a in FAMILIES {
        for src in [a.client_a, a.client_b] {
            for dst in [a.server_protected, a.server_unprotected] {
                let what = format!("{} {src} -> {dst}", a.family);
                assert!(lab.ping(lab.client_ns(), src, dst, TIMEOUT), "ping {what}");
                assert!(
                    lab.tcp_connect(src, dst, TCP_PORT, TIMEOUT),
                    "TCP connect {what}"
                );
                assert!(
                    lab.udp_request(src, dst, UDP_PORT, TIMEOUT),
                    "UDP request {what}"
                );
                let mut session = lab
                    .tcp_session(src, dst, TCP_PORT, TIMEOUT)
                    .unwrap_or_else(|e| panic!("TCP session {what}: {e}"));
                for round in 0..3 {
                    assert!(
                        session.send_and_expect_echo(TIMEOUT),
                        "TCP echo {round} {what}"
                    );
                }
                assert_eq!(
                    session.stream().local_addr().unwrap().ip(),
                    src,
                    "source of {what}"
                );
            }
        }
        // Nothing listens there: a refused port must not look reachable.
        assert!(!lab.tcp_connect(a.client_a, a.server_protected, TCP_PORT + 100, TIMEOUT));
        assert!(!lab.udp_request(a.client_a, a.server_protected, UDP_PORT + 100, TIMEOUT));
    }

    let dir = lab.bpffs_dir();
    assert!(dir.is_dir(), "{} was not created", dir.display());
    let agent = lab
        .spawn(lab.gate_ns(), &["sleep", "600"])
        .expect("spawning in the gate");
    let namespaces: Vec<String> = lab.namespaces().iter().map(|s| s.to_string()).collect();
    let agent_pid = agent.pid();
    // Leak the process guard on purpose: dropping the lab must kill it anyway.
    std::mem::forget(agent);

    drop(lab);
    let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    for ns in &namespaces {
        assert!(
            !Path::new("/run/netns").join(ns).exists(),
            "{ns} still exists"
        );
        assert!(
            !listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns)),
            "{ns} still listed"
        );
    }
    assert!(!dir.exists(), "{} was not removed", dir.display());
    let status = std::fs::read_to_string(format!("/proc/{agent_pid}/stat")).unwrap_or_default();
    // Killed but possibly not yet reaped by us (a zombie) is fine; running is not.
    assert!(
        status.is_empty() || status.contains(") Z "),
        "process {agent_pid} survived the lab"
    );
    assert_eq!(
        root_namespace_state(),
        root_before,
        "the lab left the root namespace changed"
    );
}

/// The root namespace's interfaces and forwarding settings, which a lab must not touch.
fn root_namespace_state() -> (String, String, String) {
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let names: Vec<String> = String::from_utf8_lossy(&links.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_owned()))
        .collect();
    let read = |key: &str| std::fs::read_to_string(format!("/proc/sys/{key}")).unwrap();
    (
        names.join(" "),
        read("net/ipv4/ip_forward"),
        read("net/ipv6/conf/all/forwarding"),
    )
}

#[test]
fn labs_get_distinct_names() {
    let first = Lab::new().expect("building the first lab");
    let second = Lab::new().expect("building the second lab");
    assert_ne!(first.name(), second.name());
    for name in first.namespaces().iter().chain(second.namespaces().iter()) {
        assert!(name.starts_with("jg"), "{name}");
    }
}

#[test]
fn lab_is_removed_when_a_test_panics() {
    let mut names = Vec::new();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::new().expect("building the lab");
        names.extend(lab.namespaces().iter().map(|s| s.to_string()));
        names.push(lab.bpffs_dir().display().to_string());
        panic!("a failing test");
    }));
    assert!(outcome.is_err());
    let (bpffs, namespaces) = names.split_last().expect("names recorded");
    for ns in namespaces {
        assert!(
            !Path::new("/run/netns").join(ns).exists(),
            "{ns} survived the panic"
        );
    }
    assert!(!Path::new(bpffs).exists(), "{bpffs} survived the panic");
}

#[test]
fn labs_left_by_dead_processes_are_swept() {
    // A pid no process has now: its "lab" was left by a test that was killed.
    let dead = (1_000_000..4_000_000)
        .rev()
        .find(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        .expect("a free pid");
    let stale = format!("jg{dead}-0-cli");
    let added = Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .unwrap();
    assert!(added.success(), "creating {stale}");
    let _lab = Lab::new().expect("building the lab");
    assert!(
        !Path::new("/run/netns").join(&stale).exists(),
        "{stale} was not swept"
    );
}
