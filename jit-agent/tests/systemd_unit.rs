//! The shipped systemd unit (`dist/jit-agent.service`) passes
//! `systemd-analyze verify` without a warning, and its hardening matches what
//! the agent needs: the paths it writes and the capabilities it keeps.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/jit-agent.service")
}

fn unit_text() -> String {
    std::fs::read_to_string(unit_path()).expect("reading dist/jit-agent.service")
}

/// Every value of `key=` in the unit, in order.
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

/// `systemd-analyze verify` on a copy whose ExecStart is the binary just
/// built (verify insists the program exists); the lines it prints about
/// our unit.
fn verify(unit: &str) -> Option<Vec<String>> {
    let installed = "ExecStart=/usr/local/bin/jit-agent ";
    assert!(unit.contains(installed), "the unit starts {installed:?}");
    let built = format!("ExecStart={} ", env!("CARGO_BIN_EXE_jit-agent"));
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("jit-agent.service");
    std::fs::write(&copy, unit.replace(installed, &built)).expect("writing the unit copy");
    let out = match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("running systemd-analyze: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // verify also loads the units ours names (targets); their complaints
    // are the machine's, not ours.
    let ours: Vec<String> = text
        .lines()
        .filter(|l| l.contains("jit-agent"))
        .map(str::to_owned)
        .collect();
    if !out.status.success() && ours.is_empty() {
        panic!("systemd-analyze verify failed ({}):\n{text}", out.status);
    }
    Some(ours)
}

#[test]
fn the_unit_passes_systemd_analyze_verify_without_warnings() {
    let Some(warnings) = verify(&unit_text()) else {
        println!("SKIPPED: systemd-analyze is not installed (Debian package `systemd`; `cargo xtask setup` installs it)");
        return;
    };
    assert!(
        warnings.is_empty(),
        "systemd-analyze verify warns about dist/jit-agent.service:\n{}",
        warnings.join("\n")
    );
    // The check itself can fail: a misspelt key in a copy is reported.
    let broken = unit_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes");
    let warnings = verify(&broken).expect("systemd-analyze ran a moment ago");
    assert!(
        warnings.iter().any(|w| w.contains("NoNewPrivilege")),
        "a misspelt key went unnoticed: {warnings:?}"
    );
}

#[test]
fn the_unit_is_hardened_and_lets_the_agent_write_only_its_own_paths() {
    let unit = unit_text();
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("LockPersonality", "yes"),
        ("SystemCallArchitectures", "native"),
        ("RuntimeDirectory", "jitgate"),
        ("StateDirectory", "jitgate"),
        ("Restart", "on-failure"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        (
            "RestrictAddressFamilies",
            "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        ),
    ] {
        assert_eq!(values(&unit, key), [want], "{key}=");
    }
    // A start limit, so a failing agent cannot restart in a tight loop.
    let burst: u32 = values(&unit, "StartLimitBurst")[0].parse().unwrap();
    let interval: u32 = values(&unit, "StartLimitIntervalSec")[0].parse().unwrap();
    let restart_sec: u32 = values(&unit, "RestartSec")[0]
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(
        burst * restart_sec < interval,
        "{burst} restarts every {restart_sec}s fit in {interval}s"
    );

    // The agent's default paths are exactly the writable ones.
    use jit_agent::policy::defaults;
    let writable: Vec<&str> = values(&unit, "ReadWritePaths")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect();
    let socket_dir = Path::new(defaults::API_SOCKET)
        .parent()
        .unwrap()
        .to_str()
        .unwrap();
    let bpffs_root = Path::new(defaults::BPFFS_DIR)
        .parent()
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(writable, [defaults::STATE_DIR, socket_dir, bpffs_root]);
    assert_eq!(defaults::STATE_DIR, "/var/lib/jitgate");
    assert_eq!(socket_dir, "/run/jitgate");
    assert_eq!(bpffs_root, "/sys/fs/bpf");

    // The bounding set holds what the agent keeps, plus only what start-up
    // needs (see jit-agent/src/daemon/privileges.rs).
    let bounding: Vec<&str> = values(&unit, "CapabilityBoundingSet")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect();
    for (_, kept) in jit_agent::daemon::privileges::KEPT {
        assert!(
            bounding.contains(&kept),
            "{kept} is not in the bounding set {bounding:?}"
        );
    }
    let mut sorted = bounding.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [
            "CAP_BPF",
            "CAP_CHOWN",
            "CAP_NET_ADMIN",
            "CAP_PERFMON",
            "CAP_SETPCAP"
        ]
    );
    assert!(
        !unit.contains("CAP_SYS_ADMIN"),
        "CAP_SYS_ADMIN is not needed"
    );
}
