//! Loading policies: lookups the agent relies on, directories, limits and
//! hostile input.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jit_agent::policy::{
    AttachMode, ErrorKind, Policy, PortRange, Protocol, UnixAccount, MAX_FILE_BYTES,
};

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/example.toml")
}

fn example() -> Policy {
    Policy::load(example_path()).unwrap_or_else(|e| panic!("example policy:\n{e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address parses")
}

const MINIMAL: &str = r#"
[gate]
interfaces = ["eth0"]

[zones.prod]
prefixes = ["10.20.0.0/16"]

[targets.db]
zone = "prod"
protocol = "tcp"
ports = [5432]

[roles.dba]
targets = ["db"]
max_duration = "2h"

[users.alice]
accounts = ["alice"]
roles = ["dba"]
source_prefixes = ["10.1.0.0/24"]
"#;

#[test]
fn gate_settings_and_defaults() {
    let p = example();
    let g = p.gate();
    assert_eq!(g.interfaces, ["eth0"]);
    assert_eq!(g.attach_mode, AttachMode::Auto);
    assert_eq!(g.bpffs_dir, Path::new("/sys/fs/bpf/jitgate"));
    assert_eq!(g.state_dir, Path::new("/var/lib/jitgate"));
    assert_eq!(g.api.socket, Path::new("/run/jitgate/api.sock"));
    assert_eq!(g.api.mode, 0o660);
    assert_eq!(g.metrics_listen.to_string(), "127.0.0.1:9477");
    assert_eq!(g.map_capacity, 1 << 20);
    assert_eq!(g.pending_ttl, Duration::from_secs(3600));

    let minimal = Policy::parse("minimal.toml", MINIMAL).expect("minimal policy is valid");
    assert_eq!(minimal.gate().api.group, None);
    assert_eq!(minimal.gate().pending_ttl, Duration::from_secs(3600));
}

#[test]
fn host_zones_and_idle_timeouts() {
    let minimal = Policy::parse("minimal.toml", MINIMAL).expect("minimal policy is valid");
    assert!(!minimal.zone("prod").expect("zone").host);
    let idle = minimal.gate().host_idle;
    assert_eq!(
        (idle.tcp, idle.udp, idle.icmp),
        (
            Duration::from_secs(300),
            Duration::from_secs(30),
            Duration::from_secs(10)
        )
    );
    let host = MINIMAL
        .replace(
            "interfaces = [\"eth0\"]",
            "interfaces = [\"eth0\"]\nhost_tcp_idle = \"1h\"\nhost_udp_idle = \"1s\"\nhost_icmp_idle = \"2s\"",
        )
        .replace(
            "[targets.db]",
            "[zones.self]\nprefixes = [\"192.0.2.7/32\", \"2001:db8::7/128\"]\nhost = true\n\n[targets.db]",
        );
    let p = Policy::parse("host.toml", &host).expect("a host zone is valid");
    assert!(p.zone("self").expect("zone").host);
    assert!(!p.zone("prod").expect("zone").host);
    let idle = p.gate().host_idle;
    assert_eq!(
        (idle.tcp, idle.udp, idle.icmp),
        (
            Duration::from_secs(3600),
            Duration::from_secs(1),
            Duration::from_secs(2)
        )
    );
}

#[test]
fn zones_have_stable_small_ids() {
    let p = example();
    // mgmt pins id 9; prod takes the smallest free id.
    assert_eq!(p.zone("mgmt").map(|z| z.id.get()), Some(9));
    assert_eq!(p.zone("prod").map(|z| z.id.get()), Some(1));
    let ids: Vec<u8> = p.zones().iter().map(|z| z.id.get()).collect();
    assert_eq!(ids, [1, 9], "zones come sorted by id");
    assert_eq!(
        p.zone_of(ip("10.20.3.4")).map(|z| z.name.as_str()),
        Some("prod")
    );
    assert_eq!(
        p.zone_of(ip("2001:db8:20::1")).map(|z| z.name.as_str()),
        Some("prod")
    );
    assert_eq!(
        p.zone_of(ip("10.99.0.255")).map(|z| z.name.as_str()),
        Some("mgmt")
    );
    assert!(p.zone_of(ip("10.21.0.1")).is_none());
    assert!(p.zone_of(ip("192.0.2.1")).is_none());
    let mgmt = p.zone("mgmt").expect("zone exists").id;
    assert_eq!(p.zone_by_id(mgmt).map(|z| z.name.as_str()), Some("mgmt"));

    // Adding a zone that sorts first moves unpinned ids, which is why `id` exists.
    let more = MINIMAL.replace(
        "[zones.prod]",
        "[zones.aaa]\nprefixes = [\"10.30.0.0/16\"]\n\n[zones.prod]",
    );
    let p = Policy::parse("more.toml", &more).expect("valid");
    assert_eq!(p.zone("aaa").map(|z| z.id.get()), Some(1));
    assert_eq!(p.zone("prod").map(|z| z.id.get()), Some(2));
}

#[test]
fn targets_expand_to_rules() {
    let p = example();
    let ssh = p.rules_of("web-prod-ssh").expect("target exists");
    assert_eq!(ssh.len(), 2);
    assert!(ssh
        .iter()
        .all(|r| r.protocol == Protocol::Tcp && r.ports == Some(PortRange { start: 22, end: 22 })));
    assert_eq!(ssh[0].dst.to_string(), "10.20.8.0/24");
    assert_eq!(ssh[1].dst.to_string(), "2001:db8:20:8::/64");

    // icmp on a dual-stack zone keeps only the IPv4 prefix.
    let ping = p.rules_of("prod-ping").expect("target exists");
    assert_eq!(ping.len(), 1);
    assert_eq!(ping[0].dst.to_string(), "10.20.0.0/16");
    assert_eq!(ping[0].ports, None);

    let bmc = p.target("bmc").expect("target exists");
    let ranges: Vec<String> = bmc.ports.iter().map(ToString::to_string).collect();
    assert_eq!(ranges, ["22", "443", "5900-5910"]);
    assert!(bmc.rules.iter().all(|r| r.zone.get() == 9));

    // Numbers name the same protocols as words.
    let numeric = MINIMAL.replace("protocol = \"tcp\"", "protocol = 6");
    let p = Policy::parse("numeric.toml", &numeric).expect("valid");
    assert_eq!(p.target("db").map(|t| t.protocol), Some(Protocol::Tcp));
}

#[test]
fn users_by_uid_name_and_peer() {
    let p = example();
    assert_eq!(p.user_by_uid(1002).map(|u| u.name.as_str()), Some("bob"));
    assert_eq!(p.user_by_login("bob").map(|u| u.name.as_str()), Some("bob"));
    assert_eq!(p.user_by_uid(0).map(|u| u.name.as_str()), Some("root"));
    assert!(p.user_by_uid(4242).is_none());
    assert_eq!(
        p.user_for_peer(4242, Some("alice"))
            .map(|u| u.name.as_str()),
        Some("alice")
    );
    assert_eq!(
        p.user_for_peer(1002, None).map(|u| u.name.as_str()),
        Some("bob")
    );
    // uid says bob, the login name says alice: refused, not guessed.
    assert!(p.user_for_peer(1002, Some("alice")).is_none());
    assert!(p.user_for_peer(4242, Some("nobody")).is_none());
    let bob = p.user("bob").expect("user exists");
    assert!(bob.accounts.contains(&UnixAccount::Uid(1002)));
    assert!(bob.may_connect_from(ip("10.1.0.9")));
    assert!(!bob.may_connect_from(ip("10.2.0.9")));
}

#[test]
fn approvers_need_the_flag_and_an_approver_role() {
    let p = example();
    let dba = p.role("dba").expect("role exists");
    let approvers: Vec<&str> = p.approvers_of(dba).map(|u| u.name.as_str()).collect();
    assert_eq!(approvers, ["bob", "carol"]);
    let hardware = p.role("hardware").expect("role exists");
    let approvers: Vec<&str> = p.approvers_of(hardware).map(|u| u.name.as_str()).collect();
    assert_eq!(approvers, ["bob", "carol", "dave"]);
    let alice = p.user("alice").expect("user exists");
    assert!(!p.can_approve(alice, dba));
    let oncall = p.role("oncall").expect("role exists");
    assert!(oncall.approval.is_none());
    assert!(
        !p.can_approve(p.user("carol").expect("user exists"), oncall),
        "no approval, no approvers"
    );
    let reach: Vec<&str> = p
        .roles_reaching(alice, "db-prod")
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(reach, ["dba"]);
}

#[test]
fn a_directory_is_one_policy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (gate, rest) = MINIMAL.split_at(MINIMAL.find("[roles.dba]").expect("marker"));
    std::fs::write(dir.path().join("00-gate.toml"), gate).expect("write");
    std::fs::write(dir.path().join("10-people.toml"), rest).expect("write");
    std::fs::write(dir.path().join(".10-people.toml.swp"), "garbage").expect("write");
    std::fs::write(dir.path().join("README"), "not policy").expect("write");
    let p = Policy::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.sources().len(), 2);
    assert!(p.user("alice").is_some());
    assert!(p.target("db").is_some());

    // The digest changes with the content.
    let before = p.digest().to_owned();
    assert_eq!(before.len(), 64);
    std::fs::write(dir.path().join("10-people.toml"), rest.replace("2h", "3h")).expect("write");
    let p = Policy::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(p.digest(), before);
}

#[test]
fn references_resolve_across_files_and_errors_point_at_each_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("a.toml"), MINIMAL).expect("write");
    std::fs::write(
        dir.path().join("b.toml"),
        "[users.bob]\naccounts = [\"bob\"]\nroles = [\"dab\"]\nsource_prefixes = [\"10.1.0.0/24\"]\n",
    )
    .expect("write");
    let errors = Policy::load(dir.path()).unwrap_err();
    assert_eq!(errors.total(), 1);
    let e = &errors.errors()[0];
    assert!(e.location.file.ends_with("b.toml"));
    assert_eq!(e.location.pos.map(|p| (p.line, p.column)), Some((3, 10)));
    assert_eq!(e.hint(), "did you mean `dba`?");
}

#[test]
fn files_over_the_size_limit_are_refused_without_parsing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("huge.toml");
    let mut text = String::from(MINIMAL);
    while text.len() as u64 <= MAX_FILE_BYTES {
        text.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&path, &text).expect("write");
    let errors = Policy::load(&path).unwrap_err();
    assert!(
        matches!(errors.errors()[0].kind, ErrorKind::FileTooLarge { .. }),
        "{errors}"
    );
    let errors = Policy::parse("huge.toml", &text).unwrap_err();
    assert!(
        matches!(errors.errors()[0].kind, ErrorKind::FileTooLarge { .. }),
        "{errors}"
    );
}

#[test]
fn a_fifo_is_refused_without_blocking() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("policy.toml");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let errors = Policy::load(&path).unwrap_err();
    assert_eq!(errors.errors()[0].kind, ErrorKind::NotAFile);
    // In a directory too.
    let errors = Policy::load(dir.path()).unwrap_err();
    assert_eq!(errors.errors()[0].kind, ErrorKind::NotAFile);
}

#[test]
fn a_missing_path_says_so() {
    let errors = Policy::load("/nonexistent/jitgate/policy.toml").unwrap_err();
    let text = errors.to_string();
    assert!(
        text.contains("cannot read policy: No such file or directory"),
        "{text}"
    );
    assert!(
        text.ends_with("policy is invalid: 1 error; nothing was loaded"),
        "{text}"
    );
}

#[test]
fn thousands_of_errors_are_counted_not_all_shown() {
    let mut text = String::from(MINIMAL);
    for i in 0..1000 {
        writeln!(
            text,
            "[users.u{i}]\naccounts = [\"u{i}\"]\nroles = [\"nope\"]"
        )
        .expect("write");
    }
    let start = Instant::now();
    let errors = Policy::parse("many.toml", &text).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(errors.total(), 1000);
    assert_eq!(errors.errors().len(), 200);
    assert!(errors.to_string().contains("(800 more errors not shown)"));
}

#[test]
fn a_large_valid_policy_loads_quickly() {
    let mut text = String::from("[gate]\ninterfaces = [\"eth0\"]\n");
    for z in 0..200 {
        writeln!(text, "[zones.z{z}]\nprefixes = [\"10.{z}.0.0/16\"]").expect("write");
        writeln!(
            text,
            "[targets.t{z}]\nzone = \"z{z}\"\nprotocol = \"tcp\"\nports = [22, \"8000-8100\"]"
        )
        .expect("write");
        writeln!(
            text,
            "[roles.r{z}]\ntargets = [\"t{z}\"]\nmax_duration = \"1h\""
        )
        .expect("write");
    }
    for u in 0..3000 {
        let role = u % 200;
        writeln!(
            text,
            "[users.u{u}]\naccounts = [\"u{u}\", {}]\nroles = [\"r{role}\"]\nsource_prefixes = [\"192.168.{}.0/24\"]",
            10_000 + u,
            u % 250
        )
        .expect("write");
    }
    assert!(text.len() < MAX_FILE_BYTES as usize);
    let start = Instant::now();
    let p = Policy::parse("large.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(p.zones().len(), 200);
    assert_eq!(
        p.user_by_uid(12_999).map(|u| u.name.as_str()),
        Some("u2999")
    );
}

#[test]
fn more_than_255_zones_are_refused() {
    let mut text = String::from("[gate]\ninterfaces = [\"eth0\"]\n");
    for z in 0..256 {
        writeln!(
            text,
            "[zones.z{z:03}]\nprefixes = [\"10.{}.{}.0/24\"]",
            z / 256,
            z % 256
        )
        .expect("write");
    }
    let errors = Policy::parse("zones.toml", &text).unwrap_err();
    assert!(
        errors
            .errors()
            .iter()
            .any(|e| matches!(e.kind, ErrorKind::TooManyZones { count: 256 })),
        "{errors}"
    );
}
