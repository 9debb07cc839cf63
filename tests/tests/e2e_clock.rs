//! End to end, clocks: the real agent runs with its wall clock moved under
//! it by libfaketime (the boot and monotonic clocks are left alone), while
//! the kernel's clock is the real one. A wall-clock jump must neither end a
//! grant early nor keep it open late, and role windows must follow the
//! wall clock the agent sees.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use chrono::{Timelike, Utc};
use jit_tests::{
    agent::{echo_lab, lab_policy, wait_for, Agent, ALICE, ROOT, UDP_PORT},
    lab::V4,
};

/// Where Debian's `faketime` package puts the thread-safe library.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
const DAVE: u32 = 4204;
const GRANT: Duration = Duration::from_secs(8);

/// Moves the agent's wall clock: libfaketime re-reads this file on every
/// clock call (`FAKETIME_NO_CACHE`).
struct WallOffset(PathBuf);

impl WallOffset {
    fn set(&self, offset: &str) {
        // Write then rename, so the library never reads a half-written file.
        let tmp = self.0.with_extension("tmp");
        fs::write(&tmp, format!("{offset}\n")).unwrap();
        fs::rename(&tmp, &self.0).unwrap();
    }
}

/// A role whose only window opens 4 h from now and closes 8 h from now
/// (UTC), so it is closed for the real clock and open 6 h ahead.
fn shift_policy(lab: &jit_tests::lab::Lab, scratch: &Path) -> String {
    let h = Utc::now().hour();
    let extra = format!(
        r#"
[targets.shift-udp]
prefixes = ["{srv}/32"]
protocol = "udp"
ports = [{UDP_PORT}]

[roles.shift]
targets = ["shift-udp"]
max_duration = "1h"
windows = [{{ days = ["mon-sun"], start = "{open:02}:00", end = "{close:02}:00", tz = "UTC" }}]

[users.dave]
accounts = [{DAVE}]
roles = ["shift"]
source_prefixes = ["{b}/32"]
"#,
        srv = V4.server_protected,
        b = V4.client_b,
        open = (h + 4) % 24,
        close = (h + 8) % 24,
    );
    lab_policy(lab, scratch, &extra)
}

fn state_of(agent: &Agent, id: u64) -> String {
    let v = agent.jitctl_json(ROOT, &["show", &id.to_string()]);
    v["data"]["state"].as_str().unwrap_or("?").to_owned()
}

#[test]
fn a_wall_clock_jump_neither_ends_nor_extends_a_grant_and_windows_follow_it() {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: install Debian's faketime package (cargo xtask setup does)"
    );
    let (lab, scratch) = echo_lab();
    let offset = WallOffset(scratch.path().join("faketime"));
    offset.set("+0");
    let offset_file = offset.0.display().to_string();
    let agent = Agent::start_with_env(
        &lab,
        scratch.path(),
        &shift_policy(&lab, scratch.path()),
        &[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", &offset_file),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let (a, b, srv) = (V4.client_a, V4.client_b, V4.server_protected);

    // The shift window is closed on the real wall clock.
    let early = agent.jitctl(DAVE, &["request", "shift-udp", "--for", "10m"]);
    let early_err = String::from_utf8_lossy(&early.stderr).to_string();
    assert_eq!(early.status.code(), Some(3), "{early_err}");
    assert!(early_err.contains("window"), "{early_err}");
    assert!(
        !lab.udp_request(b, srv, UDP_PORT, Duration::from_millis(300)),
        "dave passes without a grant"
    );

    let id = agent.grant("alice", "srv-udp", a, &format!("{}s", GRANT.as_secs()));
    let granted = Instant::now();
    let end = granted + GRANT;
    assert!(lab.udp_request(a, srv, UDP_PORT, Duration::from_secs(2)));
    let before = agent.jitctl_json(ALICE, &["show", &id.to_string()]);

    // Forward 6 h: a wall-clock timer would end the grant at once. The
    // shift window opens on the agent's (moved) wall clock.
    offset.set("+6h");
    let mut shift = serde_json::Value::Null;
    wait_for(
        "the shift window to open on the moved wall clock",
        GRANT / 4,
        || {
            let out = agent.jitctl(DAVE, &["--json", "request", "shift-udp", "--for", "10m"]);
            shift = serde_json::from_slice(&out.stdout).unwrap_or_default();
            out.status.success()
        },
    );
    assert_eq!(shift["data"]["state"], "active", "{shift}");
    let shift_id = shift["data"]["id"].as_u64().unwrap();
    assert!(
        lab.udp_request(b, srv, UDP_PORT, Duration::from_secs(2)),
        "dave's grant in his window does not pass"
    );
    assert_eq!(state_of(&agent, id), "active", "ended by a forward jump");
    assert!(
        lab.udp_request(a, srv, UDP_PORT, Duration::from_secs(1)),
        "a forward jump of the wall clock shortened the grant"
    );
    // The stored end did not move with the wall clock.
    let after = agent.jitctl_json(ALICE, &["show", &id.to_string()]);
    assert_eq!(before["data"]["expires_at"], after["data"]["expires_at"]);

    // Back 12 h (6 h behind the real clock): a wall-clock timer would keep
    // the grant open for hours.
    offset.set("-6h");
    assert!(
        Instant::now() < end - Duration::from_secs(2),
        "test too slow"
    );
    assert_eq!(state_of(&agent, id), "active", "ended by a backward jump");

    // Probe until well past the end on the boot clock.
    let mut last_pass = None;
    let mut first_fail = None;
    while Instant::now() < end + Duration::from_secs(3) {
        let sent = Instant::now();
        if lab.udp_request(a, srv, UDP_PORT, Duration::from_millis(100)) {
            last_pass = Some(sent);
        } else if first_fail.is_none() {
            first_fail = Some(sent);
        }
    }
    let last_pass = last_pass.expect("the grant never passed");
    assert!(
        last_pass <= end + Duration::from_millis(100),
        "passed {:?} after its end: the backward jump extended it",
        last_pass - end
    );
    let first_fail = first_fail.expect("the grant never ended");
    assert!(
        first_fail + Duration::from_millis(500) >= end,
        "blocked {:?} before its end: a jump shortened it",
        end - first_fail
    );
    wait_for(
        "the agent to record the expiry",
        Duration::from_secs(5),
        || state_of(&agent, id) == "expired",
    );
    // Dave's grant, made in his window, is timed on the boot clock too: it
    // outlives the wall clock leaving the window.
    assert_eq!(state_of(&agent, shift_id), "active");
    assert!(lab.udp_request(b, srv, UDP_PORT, Duration::from_secs(1)));
    // A new request is judged by the wall clock now: outside the window.
    agent.jitctl_ok(DAVE, &["release", &shift_id.to_string()]);
    let late = agent.jitctl(DAVE, &["request", "shift-udp", "--for", "10m"]);
    let late_err = String::from_utf8_lossy(&late.stderr).to_string();
    assert_eq!(late.status.code(), Some(3), "{late_err}");
    assert!(late_err.contains("window"), "{late_err}");

    let verify = agent.jitctl_ok(ROOT, &["audit", "verify"]);
    assert!(verify.contains("intact"), "{verify}");
}
