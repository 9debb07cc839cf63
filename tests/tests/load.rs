//! Issue 5 §5: 1,000 active grants, traffic on 100 of them, while 100 grants
//! a second are created and expire, for 60 seconds. Every probe packet
//! carries its boot-clock send time, so a verdict is judged exactly: a
//! packet sent while its grant was in force must arrive, one sent after the
//! kernel expiry of its grant, or from a source never granted, must not.

use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use jit_agent::api::{
    client,
    proto::{ApiRequest, GrantItem},
};
use jit_common::{maps, v4_mapped, FlowKey, GrantSet};
use jit_tests::{
    agent::{lab_policy, Agent, Scratch},
    lab::{in_netns, Lab, CLIENT_IF, GATE_IN_IF, V4},
};

const PORT: u16 = 7201;
const LONG_GRANTS: u32 = 1000;
const PROBED_LONG: u32 = 100;
/// Sources that never hold a grant but send all along.
const STRANGERS: u32 = 10;
/// Churn grants that also carry probe traffic, to catch late passes.
const PROBED_CHURN: u32 = 10;
const CHURN_PER_SEC: u32 = 100;
const CHURN_BATCHES_PER_SEC: u32 = 10;
const CHURN_LIFETIME: &str = "2s";

fn seconds() -> u64 {
    std::env::var("JITGATE_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

/// Long-held grant `i`: 10.200.0.0/16.
fn long_source(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0ac8_0000 + i + 1)
}

/// Churn grant `i`: 10.201.0.0/16 and up, a fresh source for each.
fn churn_source(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0ac9_0000 + i + 1)
}

/// A never-granted source: 10.210.0.0/16 (inside the user's prefix).
fn stranger_source(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0ad2_0000 + i + 1)
}

fn boot_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).expect("boot clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

fn extra_policy() -> String {
    let s4 = V4.server_protected;
    format!(
        r#"
[targets.load-udp]
prefixes = ["{s4}/32"]
protocol = "udp"
ports = [{PORT}]

[roles.load]
targets = ["load-udp"]
max_duration = "1h"
default_duration = "10m"

[users.load]
accounts = [4210]
roles = ["load"]
source_prefixes = ["10.200.0.0/14", "10.210.0.0/16"]
"#
    )
}

fn item(source: Ipv4Addr, duration: &str) -> GrantItem {
    GrantItem {
        user: "load".into(),
        target: "load-udp".into(),
        source: Some(source.to_string()),
        duration: Some(duration.into()),
        reason: Some("load test".into()),
    }
}

/// One batch call; its latency, or the refusal.
fn batch(socket: &Path, items: Vec<GrantItem>) -> Result<Duration, String> {
    let t = Instant::now();
    let answer = client::call(socket, &ApiRequest::GrantBatch { grants: items })
        .map_err(|e| e.to_string())?;
    if !answer.ok {
        return Err(format!("{:?}", answer.error));
    }
    Ok(t.elapsed())
}

fn key(src: Ipv4Addr) -> FlowKey {
    FlowKey {
        src: v4_mapped(src.octets()),
        zone_id: 1,
        proto: 17,
        _pad: [0; 3],
    }
}

/// What the receiver saw from each source: boot-clock send times.
type Seen = Mutex<HashMap<Ipv4Addr, Vec<u64>>>;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn a_minute_of_churn_under_load_gives_no_wrong_verdict_and_loses_no_grant() {
    let secs = seconds();
    let lab = Lab::new().expect("building the lab");
    let scratch = Scratch::new(&lab);
    let policy = lab_policy(&lab, scratch.path(), &extra_policy());
    let agent = Agent::start(&lab, scratch.path(), &policy);
    let socket = agent.socket().to_owned();

    // Real addresses for every probing source, and the gate's way back.
    let churn_total = CHURN_PER_SEC * secs as u32;
    let probed_churn_every = churn_total / PROBED_CHURN;
    let probed: Vec<Ipv4Addr> = (0..PROBED_LONG)
        .map(long_source)
        .chain((0..STRANGERS).map(stranger_source))
        .chain((0..PROBED_CHURN).map(|k| churn_source(k * probed_churn_every)))
        .collect();
    let mut script = String::new();
    for src in &probed {
        script.push_str(&format!("addr add {src}/32 dev {CLIENT_IF}\n"));
    }
    let script_path = scratch.path().join("addrs.batch");
    fs::write(&script_path, script).unwrap();
    lab.exec_ok(
        lab.client_ns(),
        &["ip", "-batch", &script_path.display().to_string()],
    );
    lab.exec_ok(
        lab.gate_ns(),
        &["ip", "route", "add", "10.192.0.0/10", "dev", GATE_IN_IF],
    );

    // 1,000 long-held grants.
    for first in (0..LONG_GRANTS).step_by(500) {
        let items = (first..first + 500)
            .map(|i| item(long_source(i), "30m"))
            .collect();
        batch(&socket, items).expect("the long-held grants are made");
    }

    let server = SocketAddr::new(V4.server_protected, PORT);
    let rx = in_netns(lab.server_ns(), || UdpSocket::bind(server))
        .unwrap()
        .unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let senders: Vec<(Ipv4Addr, UdpSocket)> = in_netns(lab.client_ns(), || {
        probed
            .iter()
            .map(|src| UdpSocket::bind(SocketAddr::new(IpAddr::V4(*src), 0)).map(|s| (*src, s)))
            .collect::<std::io::Result<Vec<_>>>()
    })
    .unwrap()
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Seen> = Arc::default();
    let sent: Arc<Seen> = Arc::default();
    let receiver = {
        let (stop, seen) = (stop.clone(), seen.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 64];
            // Keep reading a little after the senders stop.
            let mut quiet_since: Option<Instant> = None;
            loop {
                match rx.recv_from(&mut buf) {
                    Ok((16, SocketAddr::V4(from))) => {
                        let at = u64::from_le_bytes(buf[..8].try_into().unwrap());
                        seen.lock().unwrap().entry(*from.ip()).or_default().push(at);
                        quiet_since = None;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        if stop.load(Ordering::Relaxed) {
                            let since = *quiet_since.get_or_insert_with(Instant::now);
                            if since.elapsed() > Duration::from_millis(500) {
                                break;
                            }
                        }
                    }
                }
            }
        })
    };
    // 10 probes a second from each source, spread over the second.
    let sender = {
        let (stop, sent) = (stop.clone(), sent.clone());
        thread::spawn(move || {
            let period = Duration::from_millis(100) / senders.len() as u32;
            while !stop.load(Ordering::Relaxed) {
                for (src, sock) in &senders {
                    let at = boot_ns();
                    let mut payload = [0u8; 16];
                    payload[..8].copy_from_slice(&at.to_le_bytes());
                    if sock.send_to(&payload, server).is_ok() {
                        sent.lock().unwrap().entry(*src).or_default().push(at);
                    }
                    thread::sleep(period);
                }
            }
        })
    };
    // A reader beside the writers: status and list calls, timed.
    let reader = {
        let (stop, socket) = (stop.clone(), socket.clone());
        thread::spawn(move || {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for request in [
                    ApiRequest::Status,
                    ApiRequest::List {
                        all: true,
                        history: false,
                    },
                ] {
                    let t = Instant::now();
                    let answer = client::call(&socket, &request).expect("the agent answers");
                    assert!(answer.ok, "{answer:?}");
                    latencies.push(t.elapsed());
                }
                thread::sleep(Duration::from_millis(200));
            }
            latencies
        })
    };

    // The churn: 100 grants a second, in batches of 10 every 100 ms, each
    // for 2 s. The kernel expiry of each probed churn grant is read from
    // the map right after the answer: that it is there also shows the
    // acknowledged grant reached the kernel.
    let grants = {
        let path = jit_agent::gate::pins::map_pin(&lab.bpffs_dir(), maps::GRANTS);
        let data = MapData::from_pin(&path).expect("the pinned grant map");
        BpfHashMap::<MapData, FlowKey, GrantSet>::try_from(Map::HashMap(data)).unwrap()
    };
    let per_batch = CHURN_PER_SEC / CHURN_BATCHES_PER_SEC;
    let tick = Duration::from_secs(1) / CHURN_BATCHES_PER_SEC;
    let started = Instant::now();
    let mut write_latency = Vec::new();
    let mut made = 0u32;
    let mut late_batches = 0u32;
    let mut churn_expiry: HashMap<Ipv4Addr, u64> = HashMap::new();
    let mut missing_in_kernel = Vec::new();
    for n in 0..secs as u32 * CHURN_BATCHES_PER_SEC {
        let due = started + tick * n;
        match due.checked_duration_since(Instant::now()) {
            Some(wait) => thread::sleep(wait),
            None => late_batches += 1,
        }
        let first = n * per_batch;
        let items = (first..first + per_batch)
            .map(|i| item(churn_source(i), CHURN_LIFETIME))
            .collect();
        let latency = batch(&socket, items)
            .unwrap_or_else(|e| panic!("churn batch {n} refused: {e}\n{}", agent.log_text()));
        write_latency.push(latency);
        made += per_batch;
        for i in first..first + per_batch {
            let src = churn_source(i);
            match grants.get(&key(src), 0) {
                Ok(set) if set.count > 0 => {
                    if i % probed_churn_every == 0 {
                        churn_expiry.insert(src, set.rules[0].expires_at_ns);
                    }
                }
                // Already expired is impossible 2 s ahead; anything else is a lost grant.
                _ => missing_in_kernel.push(src),
            }
        }
    }
    let churn_secs = started.elapsed().as_secs_f64();
    // Let the last churn grants expire under the probes, then stop.
    thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    receiver.join().unwrap();
    let mut read_latency = reader.join().unwrap();

    // Verdicts.
    let seen = seen.lock().unwrap();
    let sent = sent.lock().unwrap();
    let mut wrong = Vec::new();
    let mut granted_probes = 0usize;
    for i in 0..PROBED_LONG {
        let src = long_source(i);
        let (s, r) = (
            sent.get(&src).map_or(0, Vec::len),
            seen.get(&src).map_or(0, Vec::len),
        );
        granted_probes += s;
        if s == 0 || r != s {
            wrong.push(format!("{src} (long-held grant): sent {s}, arrived {r}"));
        }
    }
    for i in 0..STRANGERS {
        let src = stranger_source(i);
        if let Some(r) = seen.get(&src) {
            wrong.push(format!(
                "{src} (never granted): {} packets arrived",
                r.len()
            ));
        }
    }
    let mut churn_probes = 0usize;
    for (src, expires) in &churn_expiry {
        for at in seen.get(src).into_iter().flatten() {
            churn_probes += 1;
            if at >= expires {
                wrong.push(format!(
                    "{src} (churn grant): a packet sent {} µs after its kernel expiry arrived",
                    (at - expires) / 1000
                ));
            }
        }
    }
    let churn_in_force = churn_expiry
        .keys()
        .filter(|src| seen.get(src).is_some_and(|v| !v.is_empty()))
        .count();

    // Grants: every long-held one still active, in the store and the
    // kernel; every churn grant ended as expired.
    let all = client::call(
        &socket,
        &ApiRequest::List {
            all: true,
            history: true,
        },
    )
    .unwrap();
    let items = all.data.as_array().expect("a list").clone();
    let count = |state: &str, prefix: &str| {
        items
            .iter()
            .filter(|g| {
                g["state"] == state && g["source"].as_str().is_some_and(|s| s.starts_with(prefix))
            })
            .count()
    };
    let long_active = count("active", "10.200.");
    let churn_expired = count("expired", "10.201.") + count("expired", "10.202.");
    let long_in_kernel = (0..LONG_GRANTS)
        .filter(|i| grants.get(&key(long_source(*i)), 0).is_ok())
        .count();
    let churn_left_in_kernel = (0..made)
        .filter(|i| grants.get(&key(churn_source(*i)), 0).is_ok())
        .count();

    write_latency.sort();
    read_latency.sort();
    eprintln!(
        "load: {secs} s, {LONG_GRANTS} long-held grants, {made} churn grants made in {churn_secs:.1} s \
         ({:.0}/s, {late_batches} batches late), {granted_probes} probes on {PROBED_LONG} granted \
         sources, {churn_probes} packets through {churn_in_force} probed churn grants, {} wrong verdicts; \
         grant_batch of {per_batch}: p50 {:?} p99 {:?} max {:?}; status/list: p50 {:?} p99 {:?} max {:?}",
        f64::from(made) / churn_secs,
        wrong.len(),
        percentile(&write_latency, 0.5),
        percentile(&write_latency, 0.99),
        write_latency.last().copied().unwrap_or_default(),
        percentile(&read_latency, 0.5),
        percentile(&read_latency, 0.99),
        read_latency.last().copied().unwrap_or_default(),
    );
    assert!(wrong.is_empty(), "wrong verdicts:\n{}", wrong.join("\n"));
    assert!(
        missing_in_kernel.is_empty(),
        "acknowledged grants missing from the kernel: {missing_in_kernel:?}"
    );
    assert_eq!(long_active, LONG_GRANTS as usize, "long-held grants lost");
    assert_eq!(
        long_in_kernel, LONG_GRANTS as usize,
        "long-held grants missing from the kernel"
    );
    assert_eq!(
        churn_expired, made as usize,
        "every churn grant ends as expired"
    );
    assert_eq!(
        churn_left_in_kernel, 0,
        "expired churn grants left in the kernel"
    );
    assert_eq!(
        churn_in_force,
        churn_expiry.len(),
        "every probed churn grant passed traffic while in force"
    );
    assert!(
        f64::from(made) >= f64::from(CHURN_PER_SEC) * secs as f64,
        "the churn kept its rate"
    );
    assert!(
        late_batches <= secs as u32,
        "{late_batches} of the churn batches started late: the agent did not keep up"
    );
    agent.jitctl_ok(0, &["audit", "verify"]);
}
