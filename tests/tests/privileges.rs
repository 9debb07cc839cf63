//! Least privilege: once started, the agent holds CAP_BPF and CAP_NET_ADMIN
//! and nothing else, in every thread, with no_new_privs set, and it still
//! does its whole job (grants pass traffic, expiry deletes kernel entries,
//! policy reload rewrites the zones); the API socket has the configured mode
//! and group.

use std::{
    os::unix::fs::{FileTypeExt as _, MetadataExt as _},
    time::Duration,
};

use jit_tests::{
    agent::{echo_lab, lab_policy, wait_for, Agent, ALICE, API_GID, ROOT, TCP_PORT, UDP_PORT},
    bin_path,
    lab::V4,
};

const CAP_NET_ADMIN: u32 = 12;
const CAP_BPF: u32 = 39;
/// Exactly what the agent may keep, as /proc shows a capability set.
const EXPECTED: u64 = (1 << CAP_NET_ADMIN) | (1 << CAP_BPF);

const SHORT: Duration = Duration::from_millis(400);

/// One `/proc/.../status` file's capability lines.
#[derive(Debug, PartialEq, Eq)]
struct Caps {
    inh: u64,
    prm: u64,
    eff: u64,
    bnd: u64,
    amb: u64,
    no_new_privs: bool,
}

fn caps(status_path: &str) -> Caps {
    let status = std::fs::read_to_string(status_path)
        .unwrap_or_else(|e| panic!("reading {status_path}: {e}"));
    let field = |name: &str| -> &str {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{status_path} has no {name} line"))
            .trim()
    };
    let hex = |name: &str| u64::from_str_radix(field(name), 16).expect("a hex capability set");
    Caps {
        inh: hex("CapInh:"),
        prm: hex("CapPrm:"),
        eff: hex("CapEff:"),
        bnd: hex("CapBnd:"),
        amb: hex("CapAmb:"),
        no_new_privs: field("NoNewPrivs:") == "1",
    }
}

const DROPPED: Caps = Caps {
    inh: 0,
    prm: EXPECTED,
    eff: EXPECTED,
    bnd: EXPECTED,
    amb: 0,
    no_new_privs: true,
};

/// The process and each of its threads (capabilities are per thread) hold
/// exactly the expected sets; returns how many threads were checked.
fn assert_dropped(agent: &Agent, when: &str) -> usize {
    let pid = agent.pid().expect("the agent runs");
    assert_eq!(
        caps(&format!("/proc/{pid}/status")),
        DROPPED,
        "{when}: the agent process"
    );
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("listing the agent's threads")
    {
        let task = task.expect("a thread entry");
        let path = format!("{}/status", task.path().display());
        // A thread may end between listing and reading.
        if std::path::Path::new(&path).exists() {
            assert_eq!(
                caps(&path),
                DROPPED,
                "{when}: thread {}",
                task.file_name().to_string_lossy()
            );
            threads += 1;
        }
    }
    threads
}

#[test]
fn the_agent_keeps_only_cap_bpf_and_cap_net_admin_in_every_thread() {
    let (lab, scratch) = echo_lab();
    let policy = lab_policy(&lab, scratch.path(), "");
    let agent = Agent::start(&lab, scratch.path(), &policy);
    let threads = assert_dropped(&agent, "after start-up");
    assert!(
        threads >= 2,
        "only {threads} threads: the runtime's were not checked"
    );
    let log = agent.log_text();
    assert!(
        log.contains("dropped every other capability") && log.contains("CAP_NET_ADMIN, CAP_BPF"),
        "the agent does not log what it kept:\n{log}"
    );
    // Work that starts new threads (the blocking pool grows on demand):
    // they inherit the reduced sets.
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let socket = agent.socket().to_owned();
            std::thread::spawn(move || {
                jit_agent::api::client::call(
                    &socket,
                    &jit_agent::api::proto::ApiRequest::AuditVerify,
                )
                .expect("audit verify")
            })
        })
        .collect();
    for c in calls {
        assert!(c.join().unwrap().ok);
    }
    assert_dropped(&agent, "after concurrent requests");
}

#[test]
fn after_the_drop_grants_pass_traffic_expire_and_policy_reload_rewrites_zones() {
    let (lab, scratch) = echo_lab();
    let policy = lab_policy(&lab, scratch.path(), "");
    let agent = Agent::start(&lab, scratch.path(), &policy);
    assert_dropped(&agent, "after start-up");
    let (a, srv, open) = (V4.client_a, V4.server_protected, V4.server_unprotected);

    // A grant writes the grant maps; traffic passes.
    assert!(
        !lab.tcp_connect(a, srv, TCP_PORT, SHORT),
        "TCP passed without a grant"
    );
    let tcp = agent.grant("alice", "srv-tcp", a, "10m");
    assert!(
        lab.tcp_connect(a, srv, TCP_PORT, SHORT * 5),
        "TCP blocked with a grant"
    );

    // Expiry deletes the kernel entries.
    let entries = |agent: &Agent| {
        agent.jitctl_json(ROOT, &["status"])["data"]["flow_entries"]
            .as_u64()
            .expect("status has flow_entries")
    };
    let with_tcp = entries(&agent);
    let udp = agent.grant("alice", "srv-udp", a, "2s");
    assert!(
        lab.udp_request(a, srv, UDP_PORT, SHORT * 5),
        "UDP blocked with a grant"
    );
    assert!(
        entries(&agent) > with_tcp,
        "the UDP grant added no kernel entry"
    );
    wait_for("the UDP grant to expire", Duration::from_secs(10), || {
        agent.jitctl_json(ROOT, &["show", &udp.to_string()])["data"]["state"] == "expired"
    });
    wait_for(
        "the expired grant's kernel entries to go",
        Duration::from_secs(5),
        || entries(&agent) == with_tcp,
    );
    assert!(
        !lab.udp_request(a, srv, UDP_PORT, SHORT),
        "UDP passed after expiry"
    );

    // A reload that puts the unprotected network into the zone and drops
    // srv-tcp from the role: zone and grant maps are rewritten.
    assert!(
        lab.tcp_connect(a, open, TCP_PORT, SHORT * 5),
        "unprotected TCP blocked"
    );
    let zone = format!("prefixes = [\"{}\", ", V4.protected_net);
    assert!(
        policy.contains(&zone),
        "the lab policy's zone line changed: {policy}"
    );
    let reloaded = policy
        .replace(
            &zone,
            &format!(
                "prefixes = [\"{}\", \"{}\", ",
                V4.protected_net, V4.unprotected_net
            ),
        )
        .replace(
            r#"targets = ["srv-tcp", "srv-udp", "srv-ping", "srv-ping6"]"#,
            r#"targets = ["srv-udp", "srv-ping", "srv-ping6"]"#,
        )
        .replace(
            "[roles.gated]\ntargets = [\"srv-tcp\"]",
            "[roles.gated]\ntargets = [\"srv-udp\"]",
        );
    std::fs::write(agent.policy_path(), &reloaded).unwrap();
    let out = agent.jitctl_ok(ROOT, &["policy", "reload"]);
    assert!(out.contains("revoked"), "{out}");
    assert_eq!(
        agent.jitctl_json(ROOT, &["show", &tcp.to_string()])["data"]["state"],
        "revoked"
    );
    assert!(
        !lab.tcp_connect(a, srv, TCP_PORT, SHORT),
        "a revoked grant still passes"
    );
    assert!(
        !lab.tcp_connect(a, open, TCP_PORT, SHORT),
        "the new zone prefix is not enforced after the reload"
    );

    // SIGHUP takes the original policy back; the prefix leaves the zone.
    std::fs::write(agent.policy_path(), &policy).unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for(
        "the SIGHUP reload to open the prefix again",
        Duration::from_secs(5),
        || lab.tcp_connect(a, open, TCP_PORT, SHORT),
    );
    agent.grant("alice", "srv-tcp", a, "10m");
    assert!(
        lab.tcp_connect(a, srv, TCP_PORT, SHORT * 5),
        "a grant after the reloads is blocked"
    );
    assert_dropped(&agent, "after grants, expiry and reloads");
}

/// Runs jitctl as `uid` with primary group `gid` and no other groups.
fn jitctl_as(socket: &std::path::Path, uid: u32, gid: u32, args: &[&str]) -> std::process::Output {
    std::process::Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg(bin_path("jitctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("running jitctl")
}

fn assert_socket(path: &std::path::Path, mode: u32, gid: u32) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        meta.file_type().is_socket(),
        "{} is not a socket",
        path.display()
    );
    assert_eq!(
        meta.mode() & 0o7777,
        mode,
        "mode {:o}",
        meta.mode() & 0o7777
    );
    assert_eq!(meta.gid(), gid, "group of {}", path.display());
    assert_eq!(meta.uid(), 0, "owner of {}", path.display());
}

#[test]
fn the_api_socket_has_mode_0660_and_the_configured_group() {
    // The lab policy's own settings.
    let (lab, scratch) = echo_lab();
    let policy = lab_policy(&lab, scratch.path(), "");
    assert!(
        policy.contains(&format!("group = {API_GID}\nmode = 0o660")),
        "{policy}"
    );
    let agent = Agent::start(&lab, scratch.path(), &policy);
    assert_socket(agent.socket(), 0o660, API_GID);
    drop(agent);
    drop(scratch);
    drop(lab);

    // Another group: its members get in, the old group's do not.
    let other: u32 = 4343;
    let (lab, scratch) = self::echo_lab();
    let policy = lab_policy(&lab, scratch.path(), "").replace(
        &format!("group = {API_GID}\n"),
        &format!("group = {other}\n"),
    );
    let agent = Agent::start(&lab, scratch.path(), &policy);
    assert_socket(agent.socket(), 0o660, other);
    let member = jitctl_as(agent.socket(), ALICE, other, &["status"]);
    assert!(
        member.status.success(),
        "{}",
        String::from_utf8_lossy(&member.stderr)
    );
    let outsider = jitctl_as(agent.socket(), ALICE, API_GID, &["status"]);
    let stderr = String::from_utf8_lossy(&outsider.stderr);
    assert_eq!(outsider.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    drop(agent);
    drop(scratch);
    drop(lab);

    // A group given by name, and a stricter mode.
    let Some(group) = ["nogroup", "daemon"]
        .into_iter()
        .find_map(|name| nix::unistd::Group::from_name(name).ok().flatten())
    else {
        println!("skipping the named-group case: no nogroup or daemon group on this machine");
        return;
    };
    let (lab, scratch) = self::echo_lab();
    let policy = lab_policy(&lab, scratch.path(), "").replace(
        &format!("group = {API_GID}\nmode = 0o660"),
        &format!("group = \"{}\"\nmode = 0o600", group.name),
    );
    let agent = Agent::start(&lab, scratch.path(), &policy);
    assert_socket(agent.socket(), 0o600, group.gid.as_raw());
    let member = jitctl_as(agent.socket(), ALICE, group.gid.as_raw(), &["status"]);
    assert_eq!(
        member.status.code(),
        Some(5),
        "mode 0600 let a group member in"
    );
}

/// An agent started by hand under `setpriv`; killed and detached on drop.
struct Restricted {
    child: std::process::Child,
    pin_dir: std::path::PathBuf,
}

impl Drop for Restricted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::process::Command::new(bin_path("jit-agent"))
            .args(["detach", "--pin-dir"])
            .arg(&self.pin_dir)
            .output();
    }
}

#[test]
fn the_units_bounding_set_is_enough_to_start_and_run() {
    let unit = include_str!("../../dist/jit-agent.service");
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let bounding = format!("--bounding-set=-all,{}", caps.join(","));

    let (lab, scratch) = echo_lab();
    let policy = scratch.path().join("policy.toml");
    std::fs::write(&policy, lab_policy(&lab, scratch.path(), "")).unwrap();
    let log = scratch.path().join("agent.log");
    let out = std::fs::File::create(&log).unwrap();
    // As systemd starts it: root, with only the unit's bounding set (so
    // only those capabilities), nothing inheritable.
    let child = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.gate_ns()))
        .arg("setpriv")
        .arg(&bounding)
        .arg("--inh-caps=-all")
        .arg(bin_path("jit-agent"))
        .args(["run", "--policy"])
        .arg(&policy)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("starting jit-agent under setpriv");
    let mut agent = Restricted {
        child,
        pin_dir: lab.bpffs_dir(),
    };
    let socket = scratch.path().join("api.sock");
    let jitctl = |args: &[&str]| {
        std::process::Command::new(bin_path("jitctl"))
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .expect("running jitctl")
    };
    wait_for("the agent to answer", Duration::from_secs(20), || {
        if let Ok(Some(status)) = agent.child.try_wait() {
            panic!(
                "jit-agent with {bounding} exited ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        jitctl(&["status"]).status.success()
    });
    let pid = agent.child.id();
    assert_eq!(caps_of_pid(pid), DROPPED, "after start-up with {bounding}");

    let (a, srv) = (V4.client_a, V4.server_protected);
    assert!(!lab.tcp_connect(a, srv, TCP_PORT, SHORT));
    let src = a.to_string();
    let out = jitctl(&[
        "grant", "alice", "srv-tcp", "--from", &src, "--for", "10m", "--reason", "test",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        lab.tcp_connect(a, srv, TCP_PORT, SHORT * 5),
        "TCP blocked with a grant"
    );
}

fn caps_of_pid(pid: u32) -> Caps {
    caps(&format!("/proc/{pid}/status"))
}
