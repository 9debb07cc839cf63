//! §1: the gate's per-packet cost in the kernel, through BPF_PROG_TEST_RUN,
//! against a bare `XDP_DROP` program and the parser alone.
//!
//! BPF_PROG_TEST_RUN runs one packet `repeat` times, so a single call would
//! measure one flow whose map entry stays hot in the cache. Each figure is
//! therefore the mean over many distinct flows (different source addresses,
//! each with its own grant), measured two ways:
//! - *rotated*: `repeat = 1` per call while rotating through the flows, so
//!   every lookup follows a syscall and the previous flow's work, and the
//!   figure includes the cache misses of a large map; each call also includes
//!   the kernel's timer read around the run, the same for every program;
//! - *hot*: `repeat = R` per flow, the mean per run: the program's cost with
//!   its map entries cached, the usual BPF_PROG_TEST_RUN figure.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use ipnet::IpNet;
use jit_agent::gate::{clock, Gate, GateOptions, GrantSpec, RuleSpec};
use jit_common::proto;

use super::{
    baseline::{self, Baselines},
    report::{Report, Row, Series},
};
use crate::{
    lab::{V4, V6},
    packet::{Frame, L4},
};

pub const PORT: u16 = 7001;

/// How much to measure.
#[derive(Clone, Debug)]
pub struct KernelPlan {
    /// Grant counts, ascending.
    pub counts: Vec<u32>,
    /// Distinct flows rotated through per figure.
    pub flows: usize,
    /// Passes over the flows with `repeat = 1`.
    pub passes: usize,
    /// `repeat` of the hot measurement.
    pub hot_repeat: u32,
}

impl KernelPlan {
    pub fn full() -> KernelPlan {
        KernelPlan {
            counts: vec![1, 1_000, 100_000, 1_000_000],
            flows: 4096,
            passes: 2,
            hot_repeat: 100,
        }
    }

    pub fn quick() -> KernelPlan {
        KernelPlan {
            counts: vec![1, 1_000, 10_000],
            flows: 256,
            passes: 2,
            hot_repeat: 20,
        }
    }
}

/// The source address of grant `i`: 10.0.0.0/8, skipping nothing (the gate
/// never reads the host part for meaning).
pub fn grant_source(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + i)
}

/// Sources that hold no grant: 11.0.0.0/8.
fn stranger_source(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0b00_0000 + i)
}

fn server() -> Ipv4Addr {
    match V4.server_protected {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!("V4 holds IPv4 addresses"),
    }
}

fn unprotected() -> Ipv4Addr {
    match V4.server_unprotected {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!("V4 holds IPv4 addresses"),
    }
}

/// The lab's protected subnets as the gate's zone 1.
pub fn lab_zones() -> Vec<(IpNet, u32)> {
    let net = |p: crate::lab::Prefix| IpNet::new(p.addr, p.len).expect("lab prefixes are valid");
    vec![(net(V4.protected_net), 1), (net(V6.protected_net), 1)]
}

/// Installs grants `from..to` (TCP to the protected server's port) into `gate`.
pub fn install_grants(gate: &mut Gate, from: u32, to: u32, port: u16) -> Result<()> {
    let expires = clock::boot_ns() + Duration::from_secs(4 * 3600).as_nanos() as u64;
    let dst = IpNet::new(IpAddr::V4(server()), 32).expect("a /32 is valid");
    for i in from..to {
        let slot = gate.allocate_slot().context("allocating a stats slot")?;
        gate.install(&GrantSpec {
            id: u64::from(i) + 1,
            src: IpAddr::V4(grant_source(i)),
            rules: vec![RuleSpec {
                dst,
                proto: proto::TCP,
                port_lo: port,
                port_hi: port,
            }],
            expires_at_boot_ns: expires,
            slot,
        })
        .with_context(|| format!("installing grant {i}"))?;
    }
    Ok(())
}

fn tcp_frame(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    tcp_frame_from_port(src, 40000, dst)
}

fn tcp_frame_from_port(src: Ipv4Addr, sport: u16, dst: Ipv4Addr) -> Vec<u8> {
    Frame::v4(src, dst, L4::Tcp { dport: PORT })
        .sport(sport)
        .payload(18)
        .bytes()
}

/// `flows` distinct granted flows over `count` grants: with at least as many
/// grants as flows, the k-th of `flows` evenly spaced grants; with fewer,
/// every grant in turn, the flows told apart by their source ports (the gate
/// keys grants by source, so these share map entries, as such flows would).
fn granted_frames(count: u32, flows: usize) -> Vec<Vec<u8>> {
    (0..flows)
        .map(|k| {
            if count as usize >= flows {
                let i = (k as u64 * u64::from(count) / flows as u64) as u32;
                tcp_frame(grant_source(i), server())
            } else {
                let i = k as u32 % count;
                let sport = 20000 + (k as u32 / count) as u16;
                tcp_frame_from_port(grant_source(i), sport, server())
            }
        })
        .collect()
}

/// Median ns per packet: (rotated, hot), checking every verdict is `want`.
/// Medians, not means: a run preempted by another task on a busy machine
/// reports its time off the CPU too, and one such outlier would move a mean.
fn measure(
    prog: &mut Xdp,
    frames: &[Vec<u8>],
    plan: &KernelPlan,
    want: Option<u32>,
) -> Result<(f64, f64)> {
    let run = |prog: &mut Xdp, frame: &[u8], repeat: u32| -> Result<f64> {
        // The kernel gives up a run with EINTR when a signal is pending
        // (net/bpf/test_run.c, bpf_test_timer_continue); such a run is
        // simply repeated.
        let mut tries = 0;
        let r = loop {
            let r = prog.test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..TestRunOptions::new()
            });
            match r {
                Err(e) if tries < 10 && format!("{e:?}").contains("Interrupted") => tries += 1,
                other => break other.context("BPF_PROG_TEST_RUN")?,
            }
        };
        if let Some(want) = want {
            if r.return_value != want {
                bail!("verdict {} where {want} was expected", r.return_value);
            }
        }
        Ok(r.duration.as_nanos() as f64)
    };
    let mut rotated = Vec::with_capacity(frames.len() * plan.passes);
    for _ in 0..plan.passes {
        for frame in frames {
            rotated.push(run(prog, frame, 1)?);
        }
    }
    let mut hot = Vec::with_capacity(frames.len());
    for frame in frames {
        hot.push(run(prog, frame, plan.hot_repeat)?);
    }
    Ok((median(&mut rotated), median(&mut hot)))
}

pub fn median(values: &mut [f64]) -> f64 {
    percentile(values, 50.0)
}

/// The nearest-rank percentile `p` (0..=100) of `values`; NaN when empty.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// One grant count's figures.
#[derive(Clone, Copy, Debug, Default)]
struct Point {
    count: u32,
    drop_base: (f64, f64),
    parse_base: (f64, f64),
    unprotected: (f64, f64),
    protected_drop: (f64, f64),
    granted: (f64, f64),
}

pub fn run(report: &mut Report, plan: &KernelPlan) -> Result<()> {
    let started = Instant::now();
    let max = *plan.counts.iter().max().context("no grant counts")?;
    let capacity = max.next_power_of_two().max(1024);
    let mut gate = Gate::load(&GateOptions {
        pin_dir: None,
        capacity,
        ..GateOptions::default()
    })
    .context("loading the gate (run as root)")?;
    gate.set_zones(&lab_zones())
        .context("setting the lab zones")?;
    let mut baselines = match Baselines::load() {
        Ok(b) => Some(b),
        Err(e) => {
            report.missing.push(format!(
                "§1 baselines: {e:#}; ratios against them are missing"
            ));
            None
        }
    };
    let flows = plan.flows;
    let strangers: Vec<Vec<u8>> = (0..flows as u32)
        .map(|i| tcp_frame(stranger_source(i), server()))
        .collect();
    let unprotected_frames: Vec<Vec<u8>> = (0..flows as u32)
        .map(|i| tcp_frame(stranger_source(i), unprotected()))
        .collect();
    let mut points = Vec::new();
    let mut installed = 0;
    for &count in &plan.counts {
        install_grants(&mut gate, installed, count, PORT)?;
        installed = count;
        let granted = granted_frames(count, flows);
        let mut p = Point {
            count,
            ..Point::default()
        };
        if let Some(b) = baselines.as_mut() {
            p.drop_base = measure(b.program(baseline::DROP), &granted, plan, Some(XDP_DROP))?;
            p.parse_base = measure(b.program(baseline::PARSE), &granted, plan, None)?;
        }
        let xdp = gate.xdp();
        p.unprotected = measure(xdp, &unprotected_frames, plan, Some(XDP_PASS))?;
        p.protected_drop = measure(xdp, &strangers, plan, Some(XDP_DROP))?;
        p.granted = measure(xdp, &granted, plan, Some(XDP_PASS))?;
        eprintln!("  §1 {count} grants: {p:?}");
        points.push(p);
    }
    let method = |what: &str, n: usize| {
        format!(
            "BPF_PROG_TEST_RUN, {what}; median of single runs (repeat=1) rotating through {n} distinct \
             IPv4/TCP flows × {} passes (includes cache misses and the kernel's timer read around each run); \
             grant map capacity {capacity}",
            plan.passes
        )
    };
    for p in &points {
        let have_base = baselines.is_some();
        for (name, v, base, base_name, n) in [
            (
                "unprotected pass",
                p.unprotected,
                p.drop_base,
                "XDP_DROP",
                flows,
            ),
            (
                "protected drop (no grant)",
                p.protected_drop,
                p.drop_base,
                "XDP_DROP",
                flows,
            ),
            ("granted pass", p.granted, p.drop_base, "XDP_DROP", flows),
            (
                "parse only (baseline)",
                p.parse_base,
                p.drop_base,
                "XDP_DROP",
                flows,
            ),
        ] {
            if name.starts_with("parse") && !have_base {
                continue;
            }
            for (kind, value, b) in [("rotated", v.0, base.0), ("hot", v.1, base.1)] {
                let mut row = Row::new(
                    "kernel",
                    format!("{name}, {} grants, {kind}", p.count),
                    value,
                    "ns/pkt",
                )
                .method(if kind == "rotated" {
                    method(name, n)
                } else {
                    format!(
                        "BPF_PROG_TEST_RUN, {name}; repeat={} per flow (kernel's mean per run, entries hot in \
                         cache), median over {n} distinct flows",
                        plan.hot_repeat
                    )
                });
                if have_base {
                    row = row.baseline(format!("{base_name} {kind}"), b);
                    if name == "granted pass" {
                        let ratio = value / b;
                        row = row
                            .target("≤ 3× trivial XDP_DROP", ratio <= 3.0)
                            .limit(
                                "the granted path adds to the parse-only baseline an LPM-trie lookup \
                                 of the destination (128-bit key), a hash lookup of the 24-byte flow key, \
                                 bpf_ktime_get_boot_ns, atomic adds on the grant's stats and a per-CPU \
                                 counter; compare the parse-only rows for the parsing share",
                            );
                    }
                }
                report.push(row);
            }
        }
    }
    // Growth from the smallest to the largest grant count.
    if let (Some(first), Some(last)) = (points.first(), points.last()) {
        if points.len() > 1 {
            for (kind, f, l) in [
                ("rotated", first.granted.0, last.granted.0),
                ("hot", first.granted.1, last.granted.1),
            ] {
                report.push(
                    Row::new(
                        "kernel",
                        format!("granted pass at {} grants, {kind}", last.count),
                        l,
                        "ns/pkt",
                    )
                    .baseline(format!("granted pass at {} grant(s)", first.count), f)
                    .target(
                        format!("≤ 1.3× from {} to {} grants", first.count, last.count),
                        l / f <= 1.3,
                    )
                    .limit(
                        "the large map no longer fits the CPU caches: a lookup of a rotated flow \
                         misses to memory, where at the small count the few entries stay cached",
                    )
                    .method(format!(
                        "ratio of the granted-pass figures above ({kind}); both rotate through {flows} distinct \
                         flows, which at {n} grant(s) share {n} map entr{ies} (told apart by source port)",
                        n = first.count,
                        ies = if first.count == 1 { "y" } else { "ies" },
                    )),
                );
            }
        }
    }
    let series = |label: &str, f: fn(&Point) -> f64| Series {
        label: label.into(),
        points: points.iter().map(|p| (f64::from(p.count), f(p))).collect(),
    };
    report.cost_series = vec![
        series("granted pass (rotated)", |p| p.granted.0),
        series("protected drop (rotated)", |p| p.protected_drop.0),
        series("unprotected pass (rotated)", |p| p.unprotected.0),
        series("granted pass (hot)", |p| p.granted.1),
    ];
    if baselines.is_some() {
        report
            .cost_series
            .push(series("parse only (rotated)", |p| p.parse_base.0));
        report
            .cost_series
            .push(series("XDP_DROP (rotated)", |p| p.drop_base.0));
    }
    report.notes.push(format!(
        "§1: grants are installed straight into the gate's maps (Gate::install), one (source, zone, TCP) key \
         per grant, capacity {capacity}; the protected-drop path also runs the denied-event rate limiter \
         (default rate, nobody reading the ring buffer). Took {:.1} s.",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}
