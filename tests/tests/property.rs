//! Property test: random, near-miss and mutated frames against random sets
//! of zones and grants, each judged by the compiled XDP program (through
//! BPF_PROG_TEST_RUN) and by the reference model, which must agree on the
//! verdict and on the reason the program counts.
//!
//! Some zones are host zones (the gate's own machine) with a random flow
//! table as the egress tracker would leave it, and some frames are replies
//! on those flows, near misses of them, or spoofs.
//!
//! `JITGATE_PROPERTY_PACKETS` sets how many frames (default 1,000,000);
//! `JITGATE_PROPERTY_SEED` replays a run whose seed a failure printed.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::programs::{TestRun, TestRunOptions};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use jit_agent::gate::{
    addr::to16, clock::boot_ns, FlowIdle, Gate, GateOptions, GrantSpec, RuleSpec,
};
use jit_common::{Reason, TrackKey, TrackValue, TRACK_INBOUND, TRACK_OUTBOUND};
use jit_tests::{
    model::{self, Expected, Grant, Idle, Policy, Rule, TrackedFlow, ANY},
    packet::{
        hex, Ext, Frame, ETH_P_8021AD, ETH_P_8021Q, L4, PROTO_GRE, PROTO_ICMP, PROTO_ICMPV6,
        PROTO_SCTP, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN,
    },
};
use rand::{rngs::Xoshiro256PlusPlus, Rng, RngExt, SeedableRng};

const DEFAULT_PACKETS: u64 = 1_000_000;
/// Frames judged against one grant set before a new one is drawn.
const BATCH: u64 = 400;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const HOUR_NS: u64 = 3_600_000_000_000;
/// Idle timeout of tracked flows. Fresh flows are at most half of it old
/// and idle ones at least twice it, so the few microseconds between the
/// model's clock and the program's never decide a verdict.
const IDLE_NS: u64 = 10_000_000_000;
/// BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header and
/// longer than a page minus the XDP headroom; stay well inside.
const MIN_FRAME: usize = 14;
const MAX_FRAME: usize = 1500;
/// Mismatches printed in full; the rest are only counted.
const SHOWN_MISMATCHES: usize = 10;

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={value:?} is not a number: {e}")),
    )
}

#[test]
fn program_agrees_with_the_model() {
    let seed = env_u64("JITGATE_PROPERTY_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970");
        t.as_secs() ^ (t.subsec_nanos() as u64) << 20
    });
    let packets = env_u64("JITGATE_PROPERTY_PACKETS").unwrap_or(DEFAULT_PACKETS);
    println!(
        "property test: seed {seed} (replay with JITGATE_PROPERTY_SEED={seed}), {packets} packets"
    );
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut bench = Bench::new();
    let mut mismatches = 0usize;
    let mut checked = 0u64;
    let mut by_reason: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
    while checked < packets {
        let mut world = World::random(&mut rng, boot_ns());
        bench.install(&world);
        // Aim hits at what the kernel holds, not at grants it refused.
        world.grants = bench.policy.grants.clone();
        for _ in 0..BATCH.min(packets - checked) {
            let (kind, frame) = world.frame(&mut rng);
            checked += 1;
            *by_kind.entry(kind).or_default() += 1;
            let now = boot_ns();
            let expected = model::expect(&frame, &bench.policy, now);
            *by_reason.entry(expected.reason.name()).or_default() += 1;
            if let Err(answer) = bench.judge(&frame, &expected) {
                mismatches += 1;
                if mismatches <= SHOWN_MISMATCHES {
                    eprintln!(
                        "MISMATCH #{mismatches} (seed {seed}, packet {checked}, {kind})\n  \
                         packet {}\n  model   {:?} in zone {} (grants {:?})\n  program {answer}\n  \
                         zones   {:?}\n  grants  {:#?}",
                        hex(&frame),
                        expected.reason,
                        expected.zone_id,
                        expected.passed_by,
                        bench.policy.zones,
                        bench.policy.grants,
                    );
                }
            }
        }
    }
    println!("property test: model verdicts {by_reason:?}");
    println!("property test: frame kinds {by_kind:?}");
    println!("property test: {checked} packets checked, {mismatches} mismatches (seed {seed})");
    assert_eq!(
        mismatches, 0,
        "{mismatches} of {checked} packets disagree; replay with JITGATE_PROPERTY_SEED={seed}"
    );
}

/// The gate and the policy the model is told is installed in it.
struct Bench {
    gate: Gate,
    policy: Policy,
    slots: Vec<u32>,
}

impl Bench {
    fn new() -> Bench {
        let gate = Gate::load(&GateOptions {
            pin_dir: None,
            capacity: 4096,
            debug_log: false,
            denied_events_per_sec: 1000,
        })
        .expect("loading the gate (needs root and a BPF-capable kernel)");
        Bench {
            gate,
            policy: Policy::default(),
            slots: Vec::new(),
        }
    }

    /// Replaces everything in the gate with `world`. Grants the agent
    /// refuses (a rule spanning zones, a full flow set) are left out of the
    /// model too, so the model holds exactly what the kernel holds.
    fn install(&mut self, world: &World) {
        for slot in self.slots.drain(..) {
            self.gate.remove(slot).expect("removing a grant");
        }
        // The model starts each batch from an empty gate.
        assert_eq!(
            self.gate.flow_count(),
            0,
            "flows left after removing every grant"
        );
        self.gate
            .set_zones_with_hosts(&world.zones, &world.host_zones)
            .expect("setting zones");
        self.gate
            .set_flow_idle(FlowIdle {
                tcp: std::time::Duration::from_nanos(IDLE_NS),
                udp: std::time::Duration::from_nanos(IDLE_NS),
                icmp: std::time::Duration::from_nanos(IDLE_NS),
            })
            .expect("setting idle timeouts");
        // The gate itself notes granted UDP flows into host zones; start
        // each batch from exactly the world's table.
        self.gate.clear_tracked_flows().expect("clearing flows");
        for f in &world.flows {
            let key = TrackKey {
                local: to16(f.local),
                remote: to16(f.remote),
                local_port: f.local_port,
                remote_port: f.remote_port,
                proto: f.proto,
                _pad: [0; 3],
            };
            let value = TrackValue {
                last_seen_ns: f.last_seen_ns,
                direction: if f.outbound {
                    TRACK_OUTBOUND
                } else {
                    TRACK_INBOUND
                },
                _pad: 0,
            };
            self.gate
                .insert_tracked_flow(key, value)
                .expect("writing a tracked flow");
        }
        let mut installed = Vec::new();
        for (id, grant) in world.grants.iter().enumerate() {
            let slot = self.gate.allocate_slot().expect("a free stats slot");
            let spec = GrantSpec {
                id: id as u64,
                src: grant.src,
                rules: grant
                    .rules
                    .iter()
                    .map(|r| RuleSpec {
                        dst: r.dst,
                        proto: r.proto,
                        port_lo: r.port_lo,
                        port_hi: r.port_hi,
                    })
                    .collect(),
                expires_at_boot_ns: grant.expires_at_ns,
                slot,
            };
            match self.gate.install(&spec) {
                Ok(()) => {
                    self.slots.push(slot);
                    installed.push(grant.clone());
                }
                Err(_) => self.gate.free_slot(slot),
            }
        }
        self.policy = Policy {
            zones: world.zones.clone(),
            grants: installed,
            host_zones: world.host_zones.clone(),
            flows: world.flows.clone(),
            idle: Idle {
                tcp_ns: IDLE_NS,
                udp_ns: IDLE_NS,
                icmp_ns: IDLE_NS,
            },
        };
    }

    fn zone_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.policy.zones.iter().map(|(_, id)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn counters(&self, zone_ids: &[u32]) -> Vec<((u32, Reason), u64)> {
        self.gate
            .counters(zone_ids)
            .expect("reading counters")
            .into_iter()
            .map(|c| ((c.zone_id, c.reason), c.packets))
            .collect()
    }

    fn run(&mut self, frame: &[u8]) -> u32 {
        self.gate
            .xdp()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN failed on {}: {e}", hex(frame)))
            .return_value
    }

    /// Runs the frame; `Err` describes the program's answer when it is not
    /// the model's.
    fn judge(&mut self, frame: &[u8], expected: &Expected) -> Result<(), String> {
        let cell = (expected.zone_id, expected.reason);
        let count = |b: &Bench| {
            b.counters(&[expected.zone_id])
                .into_iter()
                .find(|(c, _)| *c == cell)
                .map_or(0, |(_, n)| n)
        };
        let before = count(self);
        let ret = self.run(frame);
        let counted = count(self) - before;
        let want = if expected.passes() {
            XDP_PASS
        } else {
            XDP_DROP
        };
        if ret == want && counted == 1 {
            return Ok(());
        }
        // Run it again with every cell watched, to say what the program
        // counted instead.
        let zones = self.zone_ids();
        let all_before = self.counters(&zones);
        let again = self.run(frame);
        let changed: Vec<(u32, Reason)> = self
            .counters(&zones)
            .into_iter()
            .zip(all_before)
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0)
            .collect();
        Err(format!(
            "returned {ret} (again: {again}), counted (zone, reason) {changed:?}"
        ))
    }
}

/// One random policy: zones and grants, with the addresses frames are drawn
/// from.
struct World {
    zones: Vec<(IpNet, u32)>,
    grants: Vec<Grant>,
    /// Zone ids marked as the host's own.
    host_zones: Vec<u32>,
    /// The flow table: mostly flows of host-zone addresses, some of
    /// addresses in ordinary zones (which must change nothing).
    flows: Vec<TrackedFlow>,
    /// Sources that hold grants, and some that never do.
    sources: Vec<IpAddr>,
}

const PROTOS: [u8; 6] = [
    PROTO_TCP,
    PROTO_UDP,
    PROTO_SCTP,
    PROTO_ICMP,
    PROTO_GRE,
    PROTO_ICMPV6,
];

fn pick<T: Copy>(rng: &mut impl Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

fn random_v4_net(rng: &mut impl Rng, within: Ipv4Net, min_len: u8, max_len: u8) -> Ipv4Net {
    let len = rng.random_range(min_len.max(within.prefix_len())..=max_len);
    let host = u32::from(within.network()) | (rng.random::<u32>() & !u32::from(within.netmask()));
    Ipv4Net::new(Ipv4Addr::from(host), len)
        .expect("length in range")
        .trunc()
}

fn random_v6_net(rng: &mut impl Rng, within: Ipv6Net, min_len: u8, max_len: u8) -> Ipv6Net {
    let len = rng.random_range(min_len.max(within.prefix_len())..=max_len);
    let host =
        u128::from(within.network()) | (rng.random::<u128>() & !u128::from(within.netmask()));
    Ipv6Net::new(Ipv6Addr::from(host), len)
        .expect("length in range")
        .trunc()
}

/// An address of `net`: often its first or last, to test the edges.
fn addr_in(rng: &mut impl Rng, net: IpNet) -> IpAddr {
    match rng.random_range(0..4) {
        0 => net.network(),
        1 => net.broadcast(),
        _ => match net {
            IpNet::V4(n) => {
                let host = rng.random::<u32>() & !u32::from(n.netmask());
                IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | host))
            }
            IpNet::V6(n) => {
                let host = rng.random::<u128>() & !u128::from(n.netmask());
                IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | host))
            }
        },
    }
}

/// The addresses just outside `net` on each side.
fn just_outside(rng: &mut impl Rng, net: IpNet) -> IpAddr {
    let below = rng.random_bool(0.5);
    match net {
        IpNet::V4(n) => {
            let a = if below {
                u32::from(n.network()).wrapping_sub(1)
            } else {
                u32::from(n.broadcast()).wrapping_add(1)
            };
            IpAddr::V4(Ipv4Addr::from(a))
        }
        IpNet::V6(n) => {
            let a = if below {
                u128::from(n.network()).wrapping_sub(1)
            } else {
                u128::from(n.broadcast()).wrapping_add(1)
            };
            IpAddr::V6(Ipv6Addr::from(a))
        }
    }
}

impl World {
    fn random(rng: &mut impl Rng, now: u64) -> World {
        let mut zones: Vec<(IpNet, u32)> = Vec::new();
        let zone_count = rng.random_range(1..=6);
        for i in 0..zone_count {
            let net = if rng.random_bool(0.5) {
                IpNet::V4(random_v4_net(rng, "10.0.0.0/8".parse().unwrap(), 8, 28))
            } else {
                IpNet::V6(random_v6_net(
                    rng,
                    "2001:db8::/32".parse().unwrap(),
                    32,
                    120,
                ))
            };
            if zones.iter().any(|(z, _)| *z == net) {
                continue;
            }
            // Now and then two prefixes share a zone id.
            let id = if i > 0 && rng.random_bool(0.2) {
                zones[rng.random_range(0..zones.len())].1
            } else {
                i + 1
            };
            zones.push((net, id));
        }
        let mut sources: Vec<IpAddr> = (1..=3)
            .map(|i| IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)))
            .chain((1..=3).map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, i))))
            .collect();
        let mut grants = Vec::new();
        for _ in 0..rng.random_range(0..=14) {
            let src = pick(rng, &sources);
            let family_zones: Vec<IpNet> = zones
                .iter()
                .map(|(z, _)| *z)
                .filter(|z| z.addr().is_ipv4() == src.is_ipv4())
                .collect();
            if family_zones.is_empty() {
                continue;
            }
            let mut rules: Vec<Rule> = Vec::new();
            for _ in 0..rng.random_range(1..=3) {
                let zone = pick(rng, &family_zones);
                let dst = match zone {
                    IpNet::V4(z) => IpNet::V4(random_v4_net(rng, z, z.prefix_len(), 32)),
                    IpNet::V6(z) => IpNet::V6(random_v6_net(rng, z, z.prefix_len(), 128)),
                };
                let proto = match rng.random_range(0..20) {
                    0 => ANY,
                    1 | 2 => rng.random(),
                    _ => pick(rng, &PROTOS),
                };
                let port_lo = match rng.random_range(0..4) {
                    0 => 0,
                    1 => rng.random(),
                    _ => rng.random_range(1..2000),
                };
                let port_hi = match rng.random_range(0..4) {
                    0 => port_lo,
                    1 => u16::MAX,
                    _ => port_lo.saturating_add(rng.random_range(0..200)),
                };
                rules.push(Rule {
                    dst,
                    proto,
                    port_lo,
                    port_hi,
                });
            }
            let expires_at_ns = if rng.random_bool(0.3) {
                // Past, but never 0 (an unused kernel slot) and never
                // before boot.
                now - rng.random_range(1..now.clamp(2, 10 * HOUR_NS))
            } else {
                now + HOUR_NS
            };
            grants.push(Grant {
                src,
                rules,
                expires_at_ns,
            });
        }
        // Sources that never hold a grant: another user's address.
        sources.push(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 66)));
        sources.push(IpAddr::V6(Ipv6Addr::new(
            0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x66,
        )));
        let mut host_zones: Vec<u32> = zones
            .iter()
            .map(|(_, id)| *id)
            .filter(|_| rng.random_bool(0.4))
            .collect();
        host_zones.sort_unstable();
        host_zones.dedup();
        let mut flows = Vec::new();
        for _ in 0..rng.random_range(0..=10) {
            let (zone, id) = zones[rng.random_range(0..zones.len())];
            // Mostly host zones; now and then an ordinary one.
            if !host_zones.contains(&id) && !rng.random_bool(0.2) {
                continue;
            }
            let local = addr_in(rng, zone);
            let peers: Vec<IpAddr> = sources
                .iter()
                .copied()
                .filter(|s| s.is_ipv4() == local.is_ipv4())
                .collect();
            let remote = pick(rng, &peers);
            let proto = match rng.random_range(0..10) {
                0..=3 => PROTO_TCP,
                4..=6 => PROTO_UDP,
                7 if local.is_ipv4() => PROTO_ICMP,
                7 => PROTO_ICMPV6,
                8 => pick(rng, &[PROTO_ICMP, PROTO_ICMPV6]),
                _ => pick(rng, &PROTOS),
            };
            let icmp = matches!(proto, PROTO_ICMP | PROTO_ICMPV6);
            let last_seen_ns = if rng.random_bool(0.75) {
                now - rng.random_range(0..IDLE_NS / 2)
            } else {
                now.saturating_sub(2 * IDLE_NS + rng.random_range(0..IDLE_NS))
                    .max(1)
            };
            flows.push(TrackedFlow {
                local,
                remote,
                proto,
                local_port: rng.random_range(1..2000),
                remote_port: if icmp { 0 } else { rng.random_range(1..2000) },
                last_seen_ns,
                outbound: rng.random_bool(0.85),
            });
        }
        World {
            zones,
            grants,
            host_zones,
            flows,
            sources,
        }
    }

    /// One frame, and which kind of generator made it.
    fn frame(&self, rng: &mut impl Rng) -> (&'static str, Vec<u8>) {
        let roll = rng.random_range(0..100);
        if roll < 12 && !self.flows.is_empty() {
            ("tracked", self.tracked_reply(rng).bytes())
        } else if roll < 35 {
            ("hit", self.hit(rng).bytes())
        } else if roll < 60 {
            ("near-miss", self.near_miss(rng).bytes())
        } else if roll < 75 {
            ("random", self.random_frame(rng).bytes())
        } else {
            let base = match rng.random_range(0..5) {
                0 | 1 => self.hit(rng),
                2 if !self.flows.is_empty() => self.tracked_reply(rng),
                _ => self.random_frame(rng),
            };
            ("mutated", mutate(rng, base.bytes()))
        }
    }

    /// A frame one of the grants should let through (unless it expired).
    fn hit(&self, rng: &mut impl Rng) -> Frame {
        let Some(grant) = self
            .grants
            .get(rng.random_range(0..self.grants.len().max(1)))
        else {
            return self.random_frame(rng);
        };
        let rule = &grant.rules[rng.random_range(0..grant.rules.len())];
        let port = match rng.random_range(0..4) {
            0 => rule.port_lo,
            1 => rule.port_hi,
            _ => rng.random_range(rule.port_lo..=rule.port_hi),
        };
        let dst = addr_in(rng, rule.dst);
        let proto = match rule.proto {
            ANY => pick(rng, &PROTOS),
            proto => proto,
        };
        let l4 = l4_for(rng, proto, port);
        dress(rng, Frame::ip(grant.src, dst, l4))
    }

    /// A reply on a tracked flow, often with one thing wrong: a SYN (a new
    /// connection), another source, a port or identifier off by one, an
    /// echo request instead of a reply, another protocol.
    fn tracked_reply(&self, rng: &mut impl Rng) -> Frame {
        let f = &self.flows[rng.random_range(0..self.flows.len())];
        let mut src = f.remote;
        let (mut sport, mut dport) = (f.remote_port, f.local_port);
        let mut proto = f.proto;
        let mut flags = pick(rng, &[TCP_ACK, TCP_ACK | TCP_SYN, TCP_ACK | 0x08, 0x11]);
        let mut icmp_type = if proto == PROTO_ICMP { 0 } else { 129 };
        match rng.random_range(0..12) {
            0 => flags = TCP_SYN,
            1 => {
                let peers: Vec<IpAddr> = self
                    .sources
                    .iter()
                    .copied()
                    .filter(|s| s.is_ipv4() == src.is_ipv4())
                    .collect();
                src = pick(rng, &peers);
            }
            2 => sport = sport.wrapping_add(1),
            3 => dport = dport.wrapping_add(1),
            4 => icmp_type = pick(rng, &[0, 8, 128, 129, 3, 1]),
            5 => proto = pick(rng, &PROTOS),
            6 => flags = rng.random(),
            _ => {}
        }
        let l4 = match proto {
            PROTO_TCP => L4::Tcp { dport },
            PROTO_UDP => L4::Udp { dport },
            PROTO_SCTP => L4::Sctp { dport },
            PROTO_ICMP => L4::Icmp { ty: icmp_type },
            PROTO_ICMPV6 => L4::Icmpv6 { ty: icmp_type },
            proto => L4::Other { proto, len: 8 },
        };
        let frame = Frame::ip(src, f.local, l4)
            .sport(sport)
            .tcp_flags(flags)
            .icmp_id(f.local_port);
        let frame = dress(rng, frame);
        if rng.random_bool(0.05) {
            non_first_fragment(rng, frame)
        } else {
            frame
        }
    }

    /// A hit with one thing wrong: port, prefix edge, source, protocol,
    /// fragment, or a neighbour-discovery look-alike.
    fn near_miss(&self, rng: &mut impl Rng) -> Frame {
        let Some(grant) = self
            .grants
            .get(rng.random_range(0..self.grants.len().max(1)))
        else {
            return self.random_frame(rng);
        };
        let rule = &grant.rules[rng.random_range(0..grant.rules.len())];
        let mut src = grant.src;
        let mut dst = addr_in(rng, rule.dst);
        let mut proto = rule.proto;
        let mut port = rule.port_lo;
        match rng.random_range(0..6) {
            0 => port = rule.port_lo.wrapping_sub(1),
            1 => port = rule.port_hi.wrapping_add(1),
            2 => dst = just_outside(rng, rule.dst),
            3 => {
                let same_family: Vec<IpAddr> = self
                    .sources
                    .iter()
                    .copied()
                    .filter(|s| s.is_ipv4() == src.is_ipv4())
                    .collect();
                src = pick(rng, &same_family);
            }
            4 => proto = pick(rng, &PROTOS),
            _ => {
                let frame = Frame::ip(src, dst, l4_for(rng, proto, port));
                let frame = dress(rng, frame);
                return non_first_fragment(rng, frame);
            }
        }
        if dst.is_ipv4() != src.is_ipv4() {
            dst = addr_in(rng, rule.dst);
        }
        if proto == PROTO_ICMPV6 && rng.random_bool(0.5) {
            // Neighbour discovery types near the 133..=137 window, with the
            // on-link hop limit or another.
            let ty = rng.random_range(131..=139);
            let hop = pick(rng, &[255, 254, 64]);
            return dress(rng, Frame::ip(src, dst, L4::Icmpv6 { ty })).hop_limit(hop);
        }
        let l4 = l4_for(rng, proto, port);
        dress(rng, Frame::ip(src, dst, l4))
    }

    /// Any source to any destination: inside a zone, just outside one, or
    /// anywhere.
    fn random_frame(&self, rng: &mut impl Rng) -> Frame {
        let src = pick(rng, &self.sources);
        let v4 = src.is_ipv4();
        let family_zones: Vec<IpNet> = self
            .zones
            .iter()
            .map(|(z, _)| *z)
            .filter(|z| z.addr().is_ipv4() == v4)
            .collect();
        let dst = match rng.random_range(0..3) {
            0 if !family_zones.is_empty() => {
                let zone = pick(rng, &family_zones);
                addr_in(rng, zone)
            }
            1 if !family_zones.is_empty() => {
                let zone = pick(rng, &family_zones);
                just_outside(rng, zone)
            }
            _ if v4 => IpAddr::V4(Ipv4Addr::from(rng.random::<u32>())),
            _ => IpAddr::V6(Ipv6Addr::from(rng.random::<u128>())),
        };
        let proto = if rng.random_bool(0.2) {
            rng.random()
        } else {
            pick(rng, &PROTOS)
        };
        let port = rng.random();
        let l4 = l4_for(rng, proto, port);
        let mut frame = dress(rng, Frame::ip(src, dst, l4));
        if rng.random_bool(0.1) {
            frame = frame.hop_limit(255);
        }
        if rng.random_bool(0.05) {
            frame = non_first_fragment(rng, frame);
        }
        if rng.random_bool(0.03) {
            frame = Frame::arp();
        }
        frame
    }
}

fn l4_for(rng: &mut impl Rng, proto: u8, port: u16) -> L4 {
    match proto {
        PROTO_TCP => L4::Tcp { dport: port },
        PROTO_UDP => L4::Udp { dport: port },
        PROTO_SCTP => L4::Sctp { dport: port },
        PROTO_ICMP => L4::Icmp { ty: rng.random() },
        PROTO_ICMPV6 => L4::Icmpv6 {
            ty: pick(rng, &[128, 129, 1, 135, 136, 143]),
        },
        proto => L4::Other {
            proto,
            len: rng.random_range(0..24),
        },
    }
}

/// Random VLAN tags, IPv4 options, IPv6 extension headers, first-fragment
/// flags and payload around a frame.
fn dress(rng: &mut impl Rng, mut frame: Frame) -> Frame {
    let tags = match rng.random_range(0..10) {
        0..=5 => 0,
        6 | 7 => 1,
        8 => 2,
        _ => 3,
    };
    for _ in 0..tags {
        frame = frame.vlan(pick(rng, &[ETH_P_8021Q, ETH_P_8021AD]));
    }
    frame = frame.payload(rng.random_range(0..64));
    let first_fragment = rng.random_bool(0.1);
    match frame.net {
        jit_tests::packet::Net::V4(_) => frame.with_v4(|h| {
            if rng.random_bool(0.3) {
                let len = rng.random_range(1..=40);
                h.options = (0..len).map(|_| pick(rng, &[0, 1, 7, 0x94])).collect();
            }
            h.more_fragments = first_fragment;
        }),
        jit_tests::packet::Net::V6(_) => {
            let count = match rng.random_range(0..10) {
                0..=4 => 0,
                5..=7 => rng.random_range(1..=3),
                _ => rng.random_range(4..=10),
            };
            let mut ext: Vec<Ext> = (0..count)
                .map(|_| match rng.random_range(0..20) {
                    0..=5 => Ext::HopByHop {
                        len8: rng.random_range(0..4),
                    },
                    6..=10 => Ext::Routing {
                        len8: rng.random_range(0..4),
                    },
                    11..=16 => Ext::DestOpts {
                        len8: rng.random_range(0..4),
                    },
                    17 | 18 => Ext::Fragment {
                        offset: 0,
                        more: true,
                    },
                    _ => Ext::Other {
                        code: pick(rng, &[51, 135, 139, 140, 253, 254]),
                        len8: 1,
                    },
                })
                .collect();
            if first_fragment {
                ext.push(Ext::Fragment {
                    offset: 0,
                    more: true,
                });
            }
            frame.ext(&ext)
        }
        jit_tests::packet::Net::Raw(_) => frame,
    }
}

fn non_first_fragment(rng: &mut impl Rng, frame: Frame) -> Frame {
    let offset = rng.random_range(1..=0x1fff);
    let more = rng.random_bool(0.5);
    match frame.net {
        jit_tests::packet::Net::V4(_) => frame.with_v4(|h| {
            h.frag_offset = offset;
            h.more_fragments = more;
        }),
        jit_tests::packet::Net::V6(_) => frame.ext(&[Ext::Fragment { offset, more }]),
        jit_tests::packet::Net::Raw(_) => frame,
    }
}

/// Values that change how a header parses, written over random bytes.
const INTERESTING: [&[u8]; 14] = [
    &[0x81, 0x00],
    &[0x88, 0xa8],
    &[0x08, 0x00],
    &[0x86, 0xdd],
    &[0x45],
    &[0x4f],
    &[0x60],
    &[0],
    &[43],
    &[44],
    &[51],
    &[60],
    &[58],
    &[255],
];

/// One to four byte-level changes: overwrite, bit flip, truncate, extend,
/// insert, delete, or an interesting value at a random place.
fn mutate(rng: &mut impl Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.random_range(1..=4) {
        let len = bytes.len();
        match rng.random_range(0..7) {
            0 => bytes[rng.random_range(0..len)] = rng.random(),
            1 => bytes[rng.random_range(0..len)] ^= 1 << rng.random_range(0..8),
            2 => bytes.truncate(rng.random_range(MIN_FRAME..=len.max(MIN_FRAME))),
            3 => {
                let extra = rng.random_range(1..64);
                bytes.extend((0..extra).map(|_| rng.random::<u8>()));
            }
            4 => {
                let at = rng.random_range(0..=len);
                let extra: Vec<u8> = (0..rng.random_range(1..=16))
                    .map(|_| rng.random())
                    .collect();
                bytes.splice(at..at, extra);
            }
            5 => {
                let at = rng.random_range(0..len);
                let end = (at + rng.random_range(1..=16)).min(len);
                bytes.drain(at..end);
            }
            _ => {
                let value = pick(rng, &INTERESTING);
                // Headers live in the first hundred-odd bytes.
                let at = rng.random_range(0..len.min(120));
                for (i, b) in value.iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
        }
        if bytes.len() < MIN_FRAME {
            bytes.resize(MIN_FRAME, 0);
        }
        bytes.truncate(MAX_FRAME);
    }
    bytes
}
