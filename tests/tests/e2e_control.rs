//! End to end, the control plane through jitctl: every command, the state
//! machine's ends, and reconciliation of the kernel with the store.

use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use jit_common::{maps, FlowKey, GrantRule, GrantSet};
use jit_tests::{
    agent::{lab_policy, Agent, Scratch, ALICE, BOB, CAROL, ROOT, TCP_PORT, UDP_PORT},
    lab::{Lab, V4},
};

const SHORT: Duration = Duration::from_millis(400);

fn setup() -> (Lab, Scratch, Agent) {
    let lab = Lab::new().expect("building the lab");
    lab.serve_tcp_echo(TCP_PORT).unwrap();
    lab.serve_udp_echo(UDP_PORT).unwrap();
    let scratch = Scratch::new(&lab);
    let policy = lab_policy(&lab, scratch.path(), "");
    let agent = Agent::start(&lab, scratch.path(), &policy);
    (lab, scratch, agent)
}

fn id_of(v: &serde_json::Value) -> String {
    v["data"]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string()
}

#[test]
fn every_jitctl_command_works_and_refuses_clearly() {
    let (lab, _scratch, agent) = setup();
    let (a, srv) = (V4.client_a, V4.server_protected);
    let from = a.to_string();

    // request without approval (role ops): active at once, for the default.
    let v = agent.jitctl_json(ALICE, &["request", "srv-udp", "--from", &from]);
    assert_eq!(v["data"]["state"], "active", "{v}");
    assert_eq!(v["data"]["duration_secs"], 600, "default duration: {v}");
    let udp = id_of(&v);
    assert!(lab.udp_request(a, srv, UDP_PORT, SHORT * 5));

    // extend within the max, then beyond it.
    let v = agent.jitctl_json(ALICE, &["extend", &udp, "--by", "5m"]);
    assert_eq!(v["data"]["duration_secs"], 900, "{v}");
    let too_long = agent.jitctl(ALICE, &["extend", &udp, "--by", "2h"]);
    assert_eq!(
        too_long.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&too_long.stderr)
    );
    assert!(
        String::from_utf8_lossy(&too_long.stderr).contains("1h"),
        "{}",
        String::from_utf8_lossy(&too_long.stderr)
    );

    // Someone else cannot release or see it; the holder can.
    assert_eq!(
        agent.jitctl(CAROL, &["release", &udp]).status.code(),
        Some(3)
    );
    assert_eq!(agent.jitctl(CAROL, &["show", &udp]).status.code(), Some(3));
    assert_eq!(
        agent.jitctl(CAROL, &["list", "--all"]).status.code(),
        Some(3)
    );
    let v = agent.jitctl_json(ALICE, &["release", &udp]);
    assert_eq!(v["data"]["state"], "released", "{v}");
    assert!(
        !lab.udp_request(a, srv, UDP_PORT, SHORT),
        "released grant still passes"
    );

    // A longer request than the role allows is refused with the limit.
    let out = agent.jitctl(
        ALICE,
        &["request", "srv-udp", "--from", &from, "--for", "3h"],
    );
    assert_eq!(out.status.code(), Some(3));
    // A source outside the user's prefixes is refused.
    let out = agent.jitctl(
        ALICE,
        &["request", "srv-udp", "--from", &V4.client_b.to_string()],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An unknown target names itself; an unknown id is exit 4.
    let out = agent.jitctl(ALICE, &["request", "srv-nope", "--from", &from]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("srv-nope"));
    assert_eq!(agent.jitctl(ROOT, &["show", "999"]).status.code(), Some(4));
    // Only admins grant directly.
    assert_eq!(
        agent
            .jitctl(
                ALICE,
                &["grant", "alice", "srv-udp", "--from", &from, "--reason", "x"]
            )
            .status
            .code(),
        Some(3)
    );

    // Pending requests: deny, cancel.
    let text = agent.jitctl_ok(CAROL, &["request", "srv-tcp", "--reason", "CHG-1"]);
    let pending: String = text
        .split("pending as #")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let v = agent.jitctl_json(BOB, &["deny", &pending, "--reason", "not today"]);
    assert_eq!(v["data"]["state"], "denied", "{v}");
    assert_eq!(
        agent.jitctl(BOB, &["approve", &pending]).status.code(),
        Some(3),
        "approving a denied request"
    );
    let text = agent.jitctl_ok(CAROL, &["request", "srv-tcp", "--reason", "CHG-2"]);
    let pending: String = text
        .split("pending as #")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let v = agent.jitctl_json(CAROL, &["cancel", &pending]);
    assert_eq!(v["data"]["state"], "cancelled", "{v}");

    // list, history, status, policy show, audit, completions.
    let hist = agent.jitctl_json(ROOT, &["list", "--all", "--history"]);
    let states: Vec<&str> = hist["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["state"].as_str().unwrap())
        .collect();
    for s in ["released", "denied", "cancelled"] {
        assert!(states.contains(&s), "{s} missing from {states:?}");
    }
    let table = agent.jitctl_ok(ROOT, &["list", "--all", "--history"]);
    assert!(
        table.starts_with("ID") && table.contains("released"),
        "{table}"
    );
    let status = agent.jitctl_json(ALICE, &["status"]);
    assert_eq!(status["data"]["caller"], "alice", "{status}");
    let policy = agent.jitctl_json(ALICE, &["policy", "show"]);
    assert!(policy["data"]["targets"]["srv-tcp"].is_object(), "{policy}");
    assert_eq!(
        agent.jitctl(ALICE, &["audit", "tail"]).status.code(),
        Some(3)
    );
    let tail = agent.jitctl_ok(BOB, &["audit", "tail", "-n", "100"]);
    for e in [
        "\"requested\"",
        "\"extended\"",
        "\"released\"",
        "\"denied\"",
        "\"cancelled\"",
    ] {
        assert!(tail.contains(e), "{e} missing from the audit log:\n{tail}");
    }
    let completions = agent.jitctl_ok(ALICE, &["completions", "bash"]);
    assert!(completions.contains("jitctl"), "{completions}");
}

#[test]
fn watch_streams_live_events() {
    let (_lab, _scratch, agent) = setup();
    let mut child = std::process::Command::new("setpriv")
        .args([
            format!("--reuid={BOB}"),
            format!("--regid={}", jit_tests::agent::API_GID),
            "--clear-groups".into(),
        ])
        .arg(jit_tests::bin_path("jitctl"))
        .arg("--socket")
        .arg(agent.socket())
        .args(["--json", "watch"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    agent.grant("alice", "srv-tcp", V4.client_a, "10m");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let activated = line.contains("\"activated\"");
            seen.push(line);
            if activated {
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.iter().any(|l| l.contains("\"activated\"")),
        "watch saw: {seen:?}"
    );
}

fn open_grants(agent: &Agent) -> BpfHashMap<MapData, FlowKey, GrantSet> {
    let data = MapData::from_pin(agent.pin_dir().join(maps::GRANTS)).expect("pinned grant map");
    BpfHashMap::try_from(Map::HashMap(data)).expect("a hash map")
}

#[test]
fn a_restart_reconciles_the_kernel_with_the_store() {
    let (lab, _scratch, mut agent) = setup();
    let (a, b, srv) = (V4.client_a, V4.client_b, V4.server_protected);
    agent.grant("alice", "srv-tcp", a, "10m");
    assert!(lab.tcp_connect(a, srv, TCP_PORT, SHORT * 5));
    agent.kill9();

    let mut grants = open_grants(&agent);
    let keys: Vec<FlowKey> = grants.keys().map(Result::unwrap).collect();
    assert_eq!(keys.len(), 1, "one flow key for alice's grant");
    // Forge an entry nobody granted, and delete alice's.
    let mut forged = GrantSet {
        count: 1,
        ..Default::default()
    };
    let mut dst = [0u8; 16];
    dst[10] = 0xff;
    dst[11] = 0xff;
    if let std::net::IpAddr::V4(v4) = srv {
        dst[12..].copy_from_slice(&v4.octets());
    }
    forged.rules[0] = GrantRule {
        dst,
        expires_at_ns: u64::MAX,
        stats_index: 4000,
        port_lo: 1,
        port_hi: 65535,
        prefix_len: 128,
        _pad: [0; 7],
    };
    let mut key = keys[0];
    if let std::net::IpAddr::V4(v4) = b {
        key.src[12..].copy_from_slice(&v4.octets());
    }
    grants.insert(key, forged, 0).unwrap();
    grants.remove(&keys[0]).unwrap();
    drop(grants);
    assert!(
        lab.tcp_connect(b, srv, TCP_PORT, SHORT * 5),
        "the forged entry should work in the kernel"
    );
    assert!(
        !lab.tcp_connect(a, srv, TCP_PORT, SHORT),
        "the deleted entry should be gone"
    );

    agent.start_again();
    assert!(
        !lab.tcp_connect(b, srv, TCP_PORT, SHORT),
        "reconcile left a forged grant in the kernel"
    );
    assert!(
        lab.tcp_connect(a, srv, TCP_PORT, SHORT * 5),
        "reconcile did not restore alice's grant"
    );
    let tail = agent.jitctl_ok(ROOT, &["audit", "tail", "-n", "20"]);
    assert!(tail.contains("\"reconciled\""), "{tail}");
    assert!(
        tail.contains("\"added\":1") && tail.contains("\"removed\":1"),
        "{tail}"
    );
}
