//! §2: the gate against the do-it-yourself nftables gate on the same veth
//! (`gate-in` of a lab), under the same flood, and TCP throughput with iperf3.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::{IpAddr, Ipv4Addr},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::programs::XdpMode;
use ipnet::IpNet;
use jit_agent::gate::{clock, AttachMode, Gate, GateOptions, GrantSpec, RuleSpec};
use jit_common::{proto, Reason};

use super::{
    baseline::{self, Baselines},
    flood::{self, cpu_times, FloodSpec},
    kernel::{grant_source, install_grants, lab_zones, PORT},
    report::{Report, Row},
};
use crate::lab::{in_netns, Lab, LabProcess, CLIENT_IF, GATE_IN_IF, V4};

const TABLE: &str = "jgbench";

/// What limits the flood figures, as far as this bench can tell.
const VETH_LIMIT: &str = "the frames come from a socket through a veth, not a NIC: there is no driver \
    that could run XDP before allocating an skb, so XDP sees an skb already built, as nftables does, and \
    (likely) must first give it the 256-byte XDP headroom; compare the trivial XDP_DROP rows, which \
    carry that hook cost with no gate logic. The senders share the 2 CPUs with the receive path";
const IPERF_PORT: u16 = 5201;

#[derive(Clone, Debug)]
pub struct NftPlan {
    pub grants: u32,
    pub flood: Duration,
    pub max_packets: u64,
    pub iperf_secs: u32,
    pub iperf_rounds: usize,
}

impl NftPlan {
    pub fn full() -> NftPlan {
        NftPlan {
            grants: 100_000,
            flood: Duration::from_secs(5),
            max_packets: 50_000_000,
            iperf_secs: 5,
            iperf_rounds: 3,
        }
    }

    pub fn quick() -> NftPlan {
        NftPlan {
            grants: 5_000,
            flood: Duration::from_millis(800),
            max_packets: 2_000_000,
            iperf_secs: 1,
            iperf_rounds: 1,
        }
    }
}

fn v4(a: IpAddr) -> Ipv4Addr {
    match a {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!("V4 holds IPv4 addresses"),
    }
}

/// Runs `nft -f -` with `script` inside the gate namespace.
fn nft_script(lab: &Lab, script: &str) -> Result<()> {
    let mut child = lab
        .command(lab.gate_ns(), "nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nft")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())
        .context("writing the nft script")?;
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!(
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The nftables version of the gate: a netdev ingress chain on `gate-in`,
/// a set of `saddr . daddr . dport` grants with timeouts, and a drop for the
/// rest of the protected subnet.
pub fn nft_ruleset() -> String {
    format!(
        "table netdev {TABLE} {{
  counter dropped {{ }}
  counter granted {{ }}
  set grants {{
    type ipv4_addr . ipv4_addr . inet_service
    flags timeout
    size 4194304
  }}
  chain ingress {{
    type filter hook ingress device \"{GATE_IN_IF}\" priority 0; policy accept;
    ip daddr {net} ip saddr . ip daddr . th dport @grants counter name \"granted\" accept
    ip daddr {net} counter name \"dropped\" drop
  }}
}}
",
        net = V4.protected_net,
    )
}

/// Adds grants `from..to` to the nftables set, in chunks.
pub fn nft_add_grants(lab: &Lab, from: u32, to: u32, port: u16) -> Result<()> {
    let server = V4.server_protected;
    let mut i = from;
    while i < to {
        let end = (i + 20_000).min(to);
        let mut s = format!("add element netdev {TABLE} grants {{ ");
        for k in i..end {
            let _ = write!(s, "{} . {server} . {port} timeout 4h, ", grant_source(k));
        }
        s.truncate(s.len() - 2);
        s.push_str(" }\n");
        nft_script(lab, &s)?;
        i = end;
    }
    Ok(())
}

fn nft_counter(lab: &Lab, name: &str) -> Result<u64> {
    let out = lab.exec(
        lab.gate_ns(),
        &["nft", "list", "counter", "netdev", TABLE, name],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "packets" {
            return words
                .next()
                .context("counter without a number")?
                .parse()
                .context("counter value");
        }
    }
    bail!("no packets in `nft list counter {name}`: {text}")
}

fn delete_table(lab: &Lab) {
    let _ = lab.exec(lab.gate_ns(), &["nft", "delete", "table", "netdev", TABLE]);
}

/// One flood's outcome in one mode.
#[derive(Clone, Copy, Debug, Default)]
struct FloodPoint {
    offered_pps: f64,
    dropped_pps: f64,
    softirq_ns_per_drop: f64,
    sent: u64,
    dropped: u64,
}

fn run_flood(spec: &FloodSpec, dropped: &mut dyn FnMut() -> Result<u64>) -> Result<FloodPoint> {
    let d0 = dropped()?;
    let c0 = cpu_times()?;
    let r = flood::flood(spec)?;
    // Let queued frames drain before reading the counters.
    std::thread::sleep(Duration::from_millis(50));
    let c1 = cpu_times()?;
    let d1 = dropped()?;
    let secs = r.elapsed.as_secs_f64();
    let drops = d1.saturating_sub(d0);
    Ok(FloodPoint {
        offered_pps: r.sent as f64 / secs,
        dropped_pps: drops as f64 / secs,
        softirq_ns_per_drop: (c1.softirq_ns - c0.softirq_ns) / drops.max(1) as f64,
        sent: r.sent,
        dropped: drops,
    })
}

/// A gate with `grants` grants, pinned under the lab's bpffs directory (so
/// `detach_all` really detaches), attached to `gate-in` in `mode`.
fn attached_gate(lab: &Lab, grants: u32, mode: AttachMode, extra: &[GrantSpec]) -> Result<Gate> {
    let dir = lab.bpffs_dir().join("bench");
    let mut gate = Gate::load(&GateOptions {
        pin_dir: Some(dir),
        capacity: grants.next_power_of_two().max(1024) * 2,
        ..GateOptions::default()
    })
    .context("loading the gate")?;
    gate.set_zones(&lab_zones())?;
    install_grants(&mut gate, 0, grants, PORT)?;
    for spec in extra {
        let mut spec = spec.clone();
        spec.slot = gate.allocate_slot()?;
        gate.install(&spec)?;
    }
    in_netns(lab.gate_ns(), || gate.attach(GATE_IN_IF, mode))
        .context("entering the gate namespace")?
        .with_context(|| format!("attaching in {mode:?} mode"))?;
    Ok(gate)
}

fn gate_drops(gate: &Gate) -> Result<u64> {
    Ok(gate
        .counters(&[1])?
        .iter()
        .filter(|c| c.reason == Reason::DropNoGrant)
        .map(|c| c.packets)
        .sum())
}

/// iperf3 TCP throughput from client A to the protected server, in Gbit/s.
fn iperf(lab: &Lab, secs: u32) -> Result<f64> {
    let mut cmd = lab.command(lab.server_ns(), "iperf3");
    cmd.args([
        "-s",
        "-1",
        "-p",
        &IPERF_PORT.to_string(),
        "-B",
        &V4.server_protected.to_string(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let _server = LabProcess::spawn(cmd).context("starting iperf3 -s")?;
    std::thread::sleep(Duration::from_millis(300));
    let out = lab
        .command(lab.client_ns(), "timeout")
        .args([
            &(secs + 20).to_string(),
            "iperf3",
            "-c",
            &V4.server_protected.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
            "-B",
            &V4.client_a.to_string(),
            "-t",
            &secs.to_string(),
            "-J",
        ])
        .output()
        .context("running iperf3 -c")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON has no end.sum_received.bits_per_second")?;
    Ok(bps / 1e9)
}

/// What drops the flood.
#[derive(Clone, Copy, Debug)]
enum Dropper {
    /// The nftables gate with the plan's grants.
    Nft,
    /// The jitgate program with the plan's grants.
    Gate(AttachMode),
    /// `bench_count_drop`: the XDP hook's own cost.
    Trivial(XdpMode),
}

/// Sets up `dropper` on `gate-in`, floods, and takes it down again.
fn flood_with(
    lab: &Lab,
    plan: &NftPlan,
    dropper: Dropper,
    baselines: Option<&mut Baselines>,
    spec: &FloodSpec,
) -> Result<FloodPoint> {
    match dropper {
        Dropper::Nft => {
            nft_script(lab, &nft_ruleset()).context("creating the nftables gate")?;
            nft_add_grants(lab, 0, plan.grants, PORT).context("adding the nftables grants")?;
            let p = run_flood(spec, &mut || nft_counter(lab, "dropped"));
            delete_table(lab);
            p
        }
        Dropper::Gate(mode) => {
            let gate = attached_gate(lab, plan.grants, mode, &[])?;
            let p = run_flood(spec, &mut || gate_drops(&gate));
            gate.detach_all().context("detaching the gate")?;
            p
        }
        Dropper::Trivial(mode) => {
            let b = baselines.context("no baseline programs")?;
            let link = b.attach(baseline::COUNT_DROP, lab.gate_ns(), GATE_IN_IF, mode)?;
            let p = run_flood(spec, &mut || b.count_drops());
            b.detach(baseline::COUNT_DROP, lab.gate_ns(), link)?;
            p
        }
    }
}

pub fn run(report: &mut Report, plan: &NftPlan) -> Result<()> {
    let started = Instant::now();
    let lab = Lab::new().context("building the lab")?;
    let dst_mac = flood::mac_of(&lab, lab.gate_ns(), GATE_IN_IF)?;
    let src_mac = flood::mac_of(&lab, lab.client_ns(), CLIENT_IF)?;
    let server = v4(V4.server_protected);
    // 1,024 sources without a grant, rotated: every packet is a set/map miss.
    let frames: Vec<Vec<u8>> = (0..1024u32)
        .map(|i| {
            flood::udp_frame(
                dst_mac,
                src_mac,
                Ipv4Addr::from(0x0b00_0000 + i),
                server,
                PORT,
            )
        })
        .collect();
    let spec = |rate: Option<f64>| FloodSpec {
        ns: lab.client_ns().to_owned(),
        iface: CLIENT_IF.to_owned(),
        frames: frames.clone(),
        threads: 2,
        rate_pps: rate,
        duration: plan.flood,
        max_packets: plan.max_packets,
    };

    let mut baselines = match Baselines::load() {
        Ok(b) => Some(b),
        Err(e) => {
            report
                .missing
                .push(format!("§2 trivial-XDP flood and iperf3 baselines: {e:#}"));
            None
        }
    };
    let mut droppers = vec![
        ("nftables", Dropper::Nft),
        ("XDP driver", Dropper::Gate(AttachMode::Driver)),
        ("XDP generic", Dropper::Gate(AttachMode::Generic)),
    ];
    if baselines.is_some() {
        droppers.push(("trivial XDP_DROP driver", Dropper::Trivial(XdpMode::Driver)));
        droppers.push(("trivial XDP_DROP generic", Dropper::Trivial(XdpMode::Skb)));
    }

    // Phase 1: each mode flooded as fast as the senders go.
    let nft_setup = Instant::now();
    let mut max: Vec<(&str, FloodPoint)> = Vec::new();
    for (name, d) in &droppers {
        let p = flood_with(&lab, plan, *d, baselines.as_mut(), &spec(None))?;
        eprintln!("  §2 {name} max: {p:?}");
        max.push((name, p));
    }
    let nft_setup = nft_setup.elapsed();

    // Phase 2: the same offered load for every mode: 60% of the lowest
    // rate any mode's senders reached, so every mode can keep up.
    let slowest = max
        .iter()
        .map(|(_, p)| p.offered_pps)
        .fold(f64::INFINITY, f64::min);
    let rate = (slowest * 0.6).max(1000.0);
    let mut same: Vec<(&str, FloodPoint)> = Vec::new();
    for (name, d) in &droppers {
        let p = flood_with(&lab, plan, *d, baselines.as_mut(), &spec(Some(rate)))?;
        eprintln!("  §2 {name} at {rate:.0} pps: {p:?}");
        same.push((name, p));
    }

    let accounting = flood::irq_time_accounting();
    let flood_method = |what: &str| {
        format!(
            "{what}; 2 AF_PACKET sendmmsg threads (batches of 64, qdisc bypassed) in the client namespace \
             send 60-byte IPv4/UDP frames from 1,024 rotating ungranted sources to the protected server; \
             {} grants loaded; {:.1} s per run; drops counted by the dropper (gate counters / nft counter)",
            plan.grants,
            plan.flood.as_secs_f64()
        )
    };
    let nft_max_drop = max[0].1.dropped_pps;
    for (name, p) in &max {
        let mut row = Row::new(
            "nftables",
            format!("{name}: max drop rate"),
            p.dropped_pps,
            "pps",
        )
        .baseline("nftables", nft_max_drop)
        .method(flood_method(&format!(
            "senders unpaced (offered {:.0} pps, {} sent, {} dropped)",
            p.offered_pps, p.sent, p.dropped
        )));
        if *name == "XDP driver" {
            row = row
                .target("≥ 2× nftables", p.dropped_pps >= 2.0 * nft_max_drop)
                .limit(VETH_LIMIT);
        }
        report.push(row);
    }
    let nft_cpu = same[0].1.softirq_ns_per_drop;
    for (name, p) in &same {
        report.push(
            Row::new(
                "nftables",
                format!("{name}: drop rate at {rate:.0} pps offered"),
                p.dropped_pps,
                "pps",
            )
            .baseline("nftables", same[0].1.dropped_pps)
            .method(flood_method(&format!(
                "senders paced at {rate:.0} pps in all ({} sent)",
                p.sent
            ))),
        );
        let mut row = Row::new(
            "nftables",
            format!("{name}: softirq CPU per dropped packet at {rate:.0} pps"),
            p.softirq_ns_per_drop,
            "ns/pkt",
        )
        .baseline("nftables", nft_cpu)
        .method(flood_method(&format!(
            "Δ softirq time of all CPUs in /proc/stat ({accounting}) / packets dropped, same offered load"
        )));
        if *name == "XDP driver" {
            row = row
                .target("≤ 0.5× nftables", p.softirq_ns_per_drop <= 0.5 * nft_cpu)
                .limit(VETH_LIMIT);
        }
        report.push(row);
    }
    // How much of the XDP figures is the gate's program, and how much the
    // XDP hook on a veth: the gate against the counting XDP_DROP, same mode.
    for (gate_name, trivial_name) in [
        ("XDP driver", "trivial XDP_DROP driver"),
        ("XDP generic", "trivial XDP_DROP generic"),
    ] {
        let find = |n: &str| same.iter().find(|(m, _)| *m == n).map(|(_, p)| *p);
        if let (Some(g), Some(t)) = (find(gate_name), find(trivial_name)) {
            report.push(
                Row::new(
                    "nftables",
                    format!("{gate_name}: softirq CPU per dropped packet, against the bare hook"),
                    g.softirq_ns_per_drop,
                    "ns/pkt",
                )
                .baseline(trivial_name, t.softirq_ns_per_drop)
                .method(flood_method(&format!(
                    "the rows above at {rate:.0} pps: the gate against an XDP program that only counts and \
                     drops, attached the same way"
                ))),
            );
        }
    }
    report.flood = same
        .iter()
        .map(|(n, p)| {
            let max_pps = max
                .iter()
                .find(|(m, _)| m == n)
                .map_or(f64::NAN, |(_, q)| q.dropped_pps);
            (n.to_string(), max_pps, p.softirq_ns_per_drop)
        })
        .collect();

    // Granted traffic: iperf3 through the gate, program attached (with a
    // grant for client A) against no program, alternating.
    let grant = GrantSpec {
        id: u64::from(u32::MAX),
        src: V4.client_a,
        rules: vec![RuleSpec {
            dst: IpNet::new(V4.server_protected, 32).expect("a /32 is valid"),
            proto: proto::TCP,
            port_lo: IPERF_PORT,
            port_hi: IPERF_PORT,
        }],
        expires_at_boot_ns: clock::boot_ns() + 3_600_000_000_000,
        slot: 0,
    };
    let mut bare = Vec::new();
    let mut runs: Vec<(&str, Vec<f64>)> = vec![
        ("XDP driver mode", Vec::new()),
        ("XDP generic mode", Vec::new()),
    ];
    if baselines.is_some() {
        runs.push(("trivial XDP_PASS driver mode", Vec::new()));
        runs.push(("trivial XDP_PASS generic mode", Vec::new()));
    }
    for _ in 0..plan.iperf_rounds {
        bare.push(iperf(&lab, plan.iperf_secs)?);
        for (name, out) in runs.iter_mut() {
            let r = match *name {
                "XDP driver mode" | "XDP generic mode" => {
                    let mode = if name.contains("driver") {
                        AttachMode::Driver
                    } else {
                        AttachMode::Generic
                    };
                    let gate =
                        attached_gate(&lab, plan.grants, mode, std::slice::from_ref(&grant))?;
                    let r = iperf(&lab, plan.iperf_secs);
                    gate.detach_all()?;
                    r
                }
                _ => {
                    let mode = if name.contains("driver") {
                        XdpMode::Driver
                    } else {
                        XdpMode::Skb
                    };
                    let b = baselines.as_mut().context("no baseline programs")?;
                    let link = b.attach(baseline::PASS, lab.gate_ns(), GATE_IN_IF, mode)?;
                    let r = iperf(&lab, plan.iperf_secs);
                    b.detach(baseline::PASS, lab.gate_ns(), link)?;
                    r
                }
            };
            out.push(r?);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let b = mean(&bare);
    eprintln!("  §2 iperf3: no program {bare:?}, {runs:?}");
    for (name, r) in &runs {
        let w = mean(r);
        let mut row = Row::new("nftables", format!("iperf3 TCP through gate-in, {name}"), w, "Gbit/s")
            .baseline("no program", b)
            .method(format!(
                "iperf3 -t {} client A → protected server through gate-in, {} rounds alternating no program \
                 and each program, mean; the gate holds a grant for client A and {} others",
                plan.iperf_secs, plan.iperf_rounds, plan.grants
            ));
        if name.starts_with("XDP") {
            row = row.target("≥ 0.95× no program", w >= 0.95 * b).limit(
                "compare the trivial XDP_PASS rows: the cost is mostly the XDP hook on a veth, which \
                 (likely) takes TCP segments off the veth's GRO/GSO fast path, not the gate's program",
            );
        }
        report.push(row);
    }
    for (gate_name, trivial_name) in [
        ("XDP driver mode", "trivial XDP_PASS driver mode"),
        ("XDP generic mode", "trivial XDP_PASS generic mode"),
    ] {
        let find = |n: &str| runs.iter().find(|(m, _)| *m == n).map(|(_, r)| mean(r));
        if let (Some(g), Some(t)) = (find(gate_name), find(trivial_name)) {
            report.push(
                Row::new(
                    "nftables",
                    format!("iperf3 TCP, gate {gate_name}, against the bare hook"),
                    g,
                    "Gbit/s",
                )
                .baseline(trivial_name, t)
                .method("the iperf3 rows above: the gate against XDP_PASS attached the same way"),
            );
        }
    }
    report.notes.push(format!(
        "§2: veth on one 2-core VM: the senders, the veth receive path and the dropper share the same \
         CPUs (the receive side runs in softirq on the sending CPU), so a mode that drops more cheaply \
         also leaves the senders more CPU. Softirq time is {accounting}. Phase 1 (unpaced floods, \
         including loading {} grants per mode) took {:.1} s; §2 took {:.0} s.",
        plan.grants,
        nft_setup.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}
