//! A jit-agent run inside a lab's gate namespace, and jitctl calls to it as
//! different users. The agent is started with `nsenter --net` (not
//! `ip netns exec`, which remounts /sys and would hide bpffs pins).

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{
    bin_path,
    lab::{Lab, GATE_IN_IF, V4, V6},
};

/// The group the API socket is given, so test users can connect.
pub const API_GID: u32 = 4242;
/// uids of the lab's users (no accounts needed: SO_PEERCRED gives numbers).
pub const ALICE: u32 = 4201;
pub const BOB: u32 = 4202;
pub const CAROL: u32 = 4203;
pub const ROOT: u32 = 0;

/// TCP port range the lab's targets open, and its UDP port.
pub const TCP_PORT: u16 = 7001;
pub const UDP_PORT: u16 = 7101;

/// A policy for a lab: a zone of the protected subnets, targets for TCP,
/// UDP and ping to the protected server, a role needing no approval (ops), a
/// role needing one approval by leads (gated), alice holding both from
/// client A, bob a lead approver from client B, carol an unrelated user, and
/// root as admin.
pub fn lab_policy(lab: &Lab, scratch: &Path, extra: &str) -> String {
    let a4 = V4.client_a;
    let a6 = V6.client_a;
    let b4 = V4.client_b;
    let b6 = V6.client_b;
    let s4 = V4.server_protected;
    let s6 = V6.server_protected;
    format!(
        r#"
[gate]
interfaces = ["{iface}"]
bpffs_dir = "{bpffs}"
state_dir = "{state}"
metrics_listen = "127.0.0.1:9477"
map_capacity = 65536
pending_ttl = "10m"

[gate.api]
socket = "{socket}"
group = {API_GID}
mode = 0o660

[zones.lab]
prefixes = ["{p4}", "{p6}"]

[targets.srv-tcp]
prefixes = ["{s4}/32", "{s6}/128"]
protocol = "tcp"
ports = ["{TCP_PORT}-{tcp_hi}"]

[targets.srv-udp]
prefixes = ["{s4}/32", "{s6}/128"]
protocol = "udp"
ports = [{UDP_PORT}]

[targets.srv-ping]
prefixes = ["{s4}/32"]
protocol = "icmp"

[targets.srv-ping6]
prefixes = ["{s6}/128"]
protocol = "icmpv6"

[roles.ops]
targets = ["srv-tcp", "srv-udp", "srv-ping", "srv-ping6"]
max_duration = "1h"
default_duration = "10m"

[roles.gated]
targets = ["srv-tcp"]
max_duration = "1h"
default_duration = "10m"
approval = {{ required = true, approver_roles = ["leads"], approvals_needed = 1 }}

[roles.leads]
targets = ["srv-tcp"]
max_duration = "30m"

[users.alice]
accounts = [{ALICE}]
roles = ["ops", "gated"]
source_prefixes = ["{a4}/32", "{a6}/128"]

[users.bob]
accounts = [{BOB}]
roles = ["leads"]
source_prefixes = ["{b4}/32", "{b6}/128"]
approver = true

[users.carol]
accounts = [{CAROL}]
roles = ["gated"]
source_prefixes = ["{b4}/32"]

[users.root]
accounts = [0]
admin = true
{extra}
"#,
        iface = GATE_IN_IF,
        bpffs = lab.bpffs_dir().display(),
        state = scratch.join("state").display(),
        socket = scratch.join("api.sock").display(),
        p4 = V4.protected_net,
        p6 = V6.protected_net,
        tcp_hi = TCP_PORT + 9,
    )
}

/// A lab serving the TCP and UDP echo ports, and a scratch directory.
pub fn echo_lab() -> (Lab, Scratch) {
    let lab = Lab::new().expect("building the lab");
    lab.serve_tcp_echo(TCP_PORT).unwrap();
    lab.serve_udp_echo(UDP_PORT).unwrap();
    let scratch = Scratch::new(&lab);
    (lab, scratch)
}

/// [`echo_lab`] with an agent running [`lab_policy`].
pub fn echo_lab_with_agent() -> (Lab, Scratch, Agent) {
    let (lab, scratch) = echo_lab();
    let policy = lab_policy(&lab, scratch.path(), "");
    let agent = Agent::start(&lab, scratch.path(), &policy);
    (lab, scratch, agent)
}

/// Polls `check` every 100 ms until it holds; panics after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// A scratch directory for one test, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(lab: &Lab) -> Scratch {
        let dir = std::env::temp_dir().join(format!("jitgate-{}", lab.name()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating the scratch directory");
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "scratch directory kept for inspection: {}",
                self.0.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// A running agent. Dropping it kills the agent and detaches the gate.
pub struct Agent {
    gate_ns: String,
    policy: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    pin_dir: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

impl Agent {
    /// Writes the policy and starts the agent; waits until it answers.
    pub fn start(lab: &Lab, scratch: &Path, policy_text: &str) -> Agent {
        Self::start_with_env(lab, scratch, policy_text, &[])
    }

    /// As `start`, with extra environment variables for the agent.
    pub fn start_with_env(
        lab: &Lab,
        scratch: &Path,
        policy_text: &str,
        env: &[(&str, &str)],
    ) -> Agent {
        let policy = scratch.join("policy.toml");
        fs::write(&policy, policy_text).expect("writing the lab policy");
        let mut agent = Agent {
            gate_ns: lab.gate_ns().to_owned(),
            policy,
            socket: scratch.join("api.sock"),
            log: scratch.join("agent.log"),
            pin_dir: lab.bpffs_dir(),
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening the agent log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.gate_ns))
            .arg(bin_path("jit-agent"))
            .args(["run", "--policy"])
            .arg(&self.policy)
            .env(
                "RUST_LOG",
                std::env::var("JITGATE_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("starting jit-agent");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("jit-agent exited at start ({status}):\n{}", self.log_text());
                }
            }
            let out = self.jitctl(ROOT, &["status"]);
            if out.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("jit-agent did not answer within 20s:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, the way a crash or the OOM killer ends it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, a clean stop: the gate stays pinned.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    /// Sends a signal to the running agent.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(child) = self.child.as_ref() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
        }
    }

    pub fn policy_path(&self) -> &Path {
        &self.policy
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Starts the agent again on the same policy and pins.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Starts the agent again after `stop` or `kill9`.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Runs jitctl as `uid` (group API_GID) against this agent.
    pub fn jitctl(&self, uid: u32, args: &[&str]) -> Output {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={API_GID}"))
            .arg("--clear-groups")
            .arg(bin_path("jitctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null());
        cmd.output().expect("running jitctl")
    }

    /// Runs jitctl and panics unless it succeeds; returns stdout.
    pub fn jitctl_ok(&self, uid: u32, args: &[&str]) -> String {
        let out = self.jitctl(uid, args);
        assert!(
            out.status.success(),
            "jitctl {} as uid {uid} failed ({}):\nstdout: {}\nstderr: {}\nagent log:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `jitctl --json` as `uid`, parsed.
    pub fn jitctl_json(&self, uid: u32, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.jitctl_ok(uid, &all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("jitctl --json output: {e}: {out}"))
    }

    /// Admin grant for `user` to `target` from `source`; returns the id.
    pub fn grant(&self, user: &str, target: &str, source: IpAddr, duration: &str) -> u64 {
        let src = source.to_string();
        let v = self.jitctl_json(
            ROOT,
            &[
                "grant", user, target, "--from", &src, "--for", duration, "--reason", "test",
            ],
        );
        v["data"]["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("grant answer has no id: {v}"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        let _ = Command::new(bin_path("jit-agent"))
            .args(["detach", "--pin-dir"])
            .arg(&self.pin_dir)
            .output();
    }
}
