//! The demo lab: a client, a gate and a server in network namespaces, and
//! the story of one temporary access, told through jitctl.

use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use jit_tests::{
    agent::{lab_policy, Agent, Scratch, BOB, CAROL, ROOT, TCP_PORT, UDP_PORT},
    lab::{Lab, V4},
};

fn say(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

fn show(cmd: &str, out: &str) {
    println!("$ {cmd}");
    for line in out.lines() {
        println!("  {line}");
    }
}

fn jitctl(agent: &Agent, uid: u32, who: &str, args: &[&str]) -> String {
    let out = agent.jitctl(uid, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    show(&format!("({who}) jitctl {}", args.join(" ")), &text);
    text
}

fn connect(lab: &Lab, label: &str) -> bool {
    let ok = lab.tcp_connect(
        V4.client_b,
        V4.server_protected,
        TCP_PORT,
        Duration::from_millis(500),
    );
    println!(
        "  {label}: TCP {} -> {}:{} ... {}",
        V4.client_b,
        V4.server_protected,
        TCP_PORT,
        if ok {
            "\x1b[32mconnected\x1b[0m"
        } else {
            "\x1b[31mblocked\x1b[0m"
        }
    );
    ok
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    say("Building the lab: client, gate and server namespaces joined by veth pairs");
    let lab = Lab::new()?;
    lab.serve_tcp_echo(TCP_PORT)?;
    lab.serve_udp_echo(UDP_PORT)?;
    let scratch = Scratch::new(&lab);
    println!(
        "  client {} ({}), gate {}, server {} ({}, protected zone {})",
        lab.client_ns(),
        V4.client_b,
        lab.gate_ns(),
        lab.server_ns(),
        V4.server_protected,
        V4.protected_net
    );
    let policy = lab_policy(&lab, scratch.path(), "");
    let agent = Agent::start(&lab, scratch.path(), &policy);
    println!(
        "  jit-agent is running in {} with the XDP gate on gate-in",
        lab.gate_ns()
    );

    say("Carol has no access: the gate drops her packets");
    anyhow::ensure!(
        !connect(&lab, "before any grant"),
        "the gate let traffic through without a grant"
    );

    say("Carol asks for 6 seconds of access to srv-tcp; her role needs a lead's approval");
    let text = jitctl(
        &agent,
        CAROL,
        "carol",
        &[
            "request",
            "srv-tcp",
            "--for",
            "6s",
            "--reason",
            "CHG-4711 restart service",
        ],
    );
    let id = text
        .split("pending as #")
        .nth(1)
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .ok_or_else(|| anyhow::anyhow!("no pending id in: {text}"))?
        .to_owned();
    anyhow::ensure!(
        !connect(&lab, "while pending"),
        "a pending request opened access"
    );

    say("Bob, a lead, approves it: the grant becomes active at approval");
    jitctl(
        &agent,
        BOB,
        "bob",
        &["approve", &id, "--reason", "looks fine"],
    );
    let active_at = Instant::now();
    anyhow::ensure!(
        connect(&lab, "after approval"),
        "the approved grant did not open access"
    );
    jitctl(&agent, ROOT, "admin", &["list", "--all"]);

    say("Waiting for the grant to end by itself (the kernel checks expiry on every packet)");
    while active_at.elapsed() < Duration::from_secs(6) {
        print!(".");
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_millis(500));
    }
    println!();
    std::thread::sleep(Duration::from_millis(200));
    anyhow::ensure!(
        !connect(&lab, "after expiry"),
        "traffic passed after the grant expired"
    );
    jitctl(&agent, ROOT, "admin", &["show", &id]);

    say("Everything was recorded in the hash-chained audit log");
    jitctl(&agent, ROOT, "admin", &["audit", "tail", "-n", "8"]);
    jitctl(&agent, ROOT, "admin", &["audit", "verify"]);

    say("Cleaning up: agent stopped, gate detached, namespaces removed");
    drop(agent);
    drop(scratch);
    drop(lab);
    println!("done.");
    Ok(())
}
