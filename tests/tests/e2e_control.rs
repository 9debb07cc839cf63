//! End to end, the control plane through jitctl: every command, the state
//! machine's ends, and reconciliation of the kernel with the store.

use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use jit_common::{maps, FlowKey, GrantRule, GrantSet};
use jit_tests::{
    agent::{echo_lab_with_agent, Agent, ALICE, BOB, CAROL, ROOT, TCP_PORT, UDP_PORT},
    lab::{V4, V6},
};

const SHORT: Duration = Duration::from_millis(400);

fn id_of(v: &serde_json::Value) -> String {
    v["data"]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string()
}

#[test]
fn every_jitctl_command_works_and_refuses_clearly() {
    let (lab, _scratch, agent) = echo_lab_with_agent();
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
    let (_lab, _scratch, agent) = echo_lab_with_agent();
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
    let (lab, _scratch, mut agent) = echo_lab_with_agent();
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

#[test]
fn a_grant_batch_is_made_all_or_none() {
    let (lab, scratch, agent) = echo_lab_with_agent();
    let (a4, a6, b4) = (V4.client_a, V6.client_a, V4.client_b);
    let (s4, s6) = (V4.server_protected, V6.server_protected);
    let item = |user: &str, target: &str, source: std::net::IpAddr| {
        serde_json::json!({
            "user": user, "target": target, "source": source.to_string(),
            "duration": "5m", "reason": "CHG-7 batch",
        })
    };
    let write = |name: &str, items: &[serde_json::Value]| {
        let path = scratch.path().join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(items).unwrap()).unwrap();
        // jitctl runs as another uid; let it read the file.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        path.display().to_string()
    };

    let good = write(
        "good.json",
        &[
            item("alice", "srv-udp", a4),
            item("alice", "srv-tcp", a4),
            item("alice", "srv-udp", a6),
        ],
    );
    assert!(!lab.udp_request(a4, s4, UDP_PORT, SHORT));
    let v = agent.jitctl_json(ROOT, &["grant-batch", &good]);
    let made = v["data"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(made.len(), 3, "{v}");
    assert!(made.iter().all(|g| g["state"] == "active"), "{v}");
    assert!(lab.udp_request(a4, s4, UDP_PORT, SHORT * 5));
    assert!(lab.tcp_connect(a4, s4, TCP_PORT, SHORT * 5));
    assert!(lab.udp_request(a6, s6, UDP_PORT, SHORT * 5));
    let table = agent.jitctl_ok(
        ROOT,
        &[
            "grant-batch",
            &write("one.json", &[item("bob", "srv-tcp", b4)]),
        ],
    );
    assert!(
        table.contains("1 grants are active") && table.contains("bob"),
        "{table}"
    );
    assert!(lab.tcp_connect(b4, s4, TCP_PORT, SHORT * 5));
    let active_before = agent.jitctl_json(ROOT, &["list", "--all"])["data"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(active_before, 4);

    // One refused item (alice already holds srv-udp from a4) refuses all.
    let mixed = write(
        "mixed.json",
        &[item("carol", "srv-tcp", b4), item("alice", "srv-udp", a4)],
    );
    let out = agent.jitctl(ROOT, &["grant-batch", &mixed]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("grant 2 of the batch") && err.contains("no grant of the batch was made"),
        "{err}"
    );
    let after = agent.jitctl_json(ROOT, &["list", "--all"])["data"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        after, active_before,
        "nothing of the refused batch was made"
    );
    // carol's item was first and valid, yet her grant was not made.
    assert!(agent.jitctl_json(ROOT, &["list", "--all"])["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|g| g["user"] != "carol"));

    // An unknown user, a non-admin caller, a malformed file, too many items.
    let out = agent.jitctl(
        ROOT,
        &[
            "grant-batch",
            &write("ghost.json", &[item("ghost", "srv-tcp", b4)]),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("grant 1 of the batch") && err.contains("ghost"),
        "{err}"
    );
    let out = agent.jitctl(ALICE, &["grant-batch", &good]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only admins"));
    let bad = scratch.path().join("bad.json");
    std::fs::write(&bad, "[\n  {\"user\": \"alice\", \"target\": 5}\n]").unwrap();
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = agent.jitctl(ROOT, &["grant-batch", &bad.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.json:2:"), "{err}");
    let many: Vec<serde_json::Value> = (0..1001).map(|_| item("bob", "srv-tcp", b4)).collect();
    let out = agent.jitctl(ROOT, &["grant-batch", &write("many.json", &many)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("split the file"));

    // The batch's records are in the audit log, which still verifies.
    let tail = agent.jitctl_ok(ROOT, &["audit", "tail", "-n", "50"]);
    assert!(tail.matches("CHG-7 batch").count() >= 4, "{tail}");
    agent.jitctl_ok(ROOT, &["audit", "verify"]);
    // A restart finds the batch in the store and the kernel.
    let mut agent = agent;
    agent.restart();
    assert!(lab.udp_request(a6, s6, UDP_PORT, SHORT * 5));
    assert_eq!(
        agent.jitctl_json(ROOT, &["list", "--all"])["data"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
}
