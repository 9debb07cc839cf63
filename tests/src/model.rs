//! The gate's reference model: what the XDP program should answer for a
//! frame, given the zones, the grants and the time, written in plain Rust
//! from the documented rules and not from the eBPF code.
//!
//! Addresses are compared in the gate's 128-bit space (IPv4 as
//! `::ffff:a.b.c.d`, prefix lengths + 96), because that is the documented
//! form of every address in the kernel's maps. An IPv6 packet carrying an
//! IPv4-mapped address to a protected destination is malformed.
//!
//! Host mode: in a zone marked as the host's own, a packet no grant lets in
//! still passes when it is the reply on a flow the host started (see
//! [`TrackedFlow`]) and used within the protocol's idle timeout.
//! A TCP SYN without ACK never does; for ICMP only an echo reply does.

use std::net::IpAddr;

use ipnet::IpNet;
use jit_common::Reason;

/// One destination rule of a grant; `proto` [`ANY`] opens every protocol
/// and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub dst: IpNet,
    pub proto: u8,
    pub port_lo: u16,
    pub port_hi: u16,
}

/// A grant as the model sees it: live while `now < expires_at_ns`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub src: IpAddr,
    pub rules: Vec<Rule>,
    pub expires_at_ns: u64,
}

/// Everything the verdict depends on besides the frame and the time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub zones: Vec<(IpNet, u32)>,
    pub grants: Vec<Grant>,
    /// Zone ids marked as the host's own addresses.
    pub host_zones: Vec<u32>,
    /// The flow table as the egress tracker left it.
    pub flows: Vec<TrackedFlow>,
    pub idle: Idle,
}

/// One entry of the flow table, from the host's side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackedFlow {
    pub local: IpAddr,
    pub remote: IpAddr,
    pub proto: u8,
    /// The host's port, or the ICMP echo identifier.
    pub local_port: u16,
    /// The peer's port; 0 for ICMP.
    pub remote_port: u16,
    pub last_seen_ns: u64,
    /// The host started it; `false` marks a granted peer's UDP flow, which
    /// lets nothing in.
    pub outbound: bool,
}

/// Idle timeouts of tracked flows, nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Idle {
    pub tcp_ns: u64,
    pub udp_ns: u64,
    pub icmp_ns: u64,
}

/// The model's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub reason: Reason,
    /// Zone of the destination; 0 when unknown or unprotected.
    pub zone_id: u32,
    /// Indices (into `Policy::grants`) of the live grants that let the
    /// packet through; empty unless `reason` is `PassGrant`.
    pub passed_by: Vec<usize>,
}

impl Expected {
    fn new(reason: Reason, zone_id: u32) -> Expected {
        Expected {
            reason,
            zone_id,
            passed_by: Vec::new(),
        }
    }

    pub fn passes(&self) -> bool {
        self.reason.is_pass()
    }
}

/// Extension headers the gate walks past in one IPv6 packet; one more is
/// malformed.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

/// The verdict the gate should give `frame` at boot-clock time `now_ns`.
pub fn expect(frame: &[u8], policy: &Policy, now_ns: u64) -> Expected {
    let mut r = Reader {
        bytes: frame,
        at: 0,
    };
    let Some(ip) = read_network(&mut r) else {
        return Expected::new(Reason::DropMalformed, 0);
    };
    let ip = match ip {
        Network::NotIp => return Expected::new(Reason::PassNonIp, 0),
        Network::Ip(ip) => ip,
    };
    let Some(zone_id) = zone_of_addr(&policy.zones, ip.dst) else {
        return Expected::new(Reason::PassUnprotected, 0);
    };
    // IPv4-mapped addresses must not appear in IPv6 packets (RFC 4291
    // §2.5.5.2); one to a protected destination is malformed.
    let mapped = |a: u128| a >> 32 == 0xffff;
    if ip.v6 && (mapped(ip.src) || mapped(ip.dst)) {
        return Expected::new(Reason::DropMalformed, zone_id);
    }
    let transport = match read_transport(&mut r, &ip) {
        Ok(Some(t)) => t,
        Ok(None) => return Expected::new(Reason::DropFragment, zone_id),
        Err(Bad) => return Expected::new(Reason::DropMalformed, zone_id),
    };
    // RFC 4861 §7.1.1: on-link neighbour discovery always carries hop
    // limit 255, so only such messages are let through without a grant.
    if ip.v6
        && transport.proto == ICMPV6
        && (133..=137).contains(&transport.icmp_type)
        && ip.hop_limit == 255
    {
        return Expected::new(Reason::PassNeighbor, zone_id);
    }
    let verdict = judge_grants(policy, &ip, zone_id, &transport, now_ns);
    if verdict.reason != Reason::PassGrant
        && policy.host_zones.contains(&zone_id)
        && tracked_reply(policy, &ip, &transport, now_ns)
    {
        return Expected::new(Reason::PassTracked, zone_id);
    }
    verdict
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Whether the packet answers a live flow the host started.
fn tracked_reply(policy: &Policy, ip: &IpFacts, t: &Transport, now_ns: u64) -> bool {
    let (local_port, remote_port, idle) = match t.proto {
        TCP if t.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN => return false,
        TCP => (t.dport, t.sport, policy.idle.tcp_ns),
        UDP => (t.dport, t.sport, policy.idle.udp_ns),
        ICMP if !ip.v6 && t.icmp_type == 0 => (t.icmp_id, 0, policy.idle.icmp_ns),
        ICMPV6 if ip.v6 && t.icmp_type == 129 => (t.icmp_id, 0, policy.idle.icmp_ns),
        _ => return false,
    };
    policy.flows.iter().any(|f| {
        f.outbound
            && wide(f.local) == ip.dst
            && wide(f.remote) == ip.src
            && f.proto == t.proto
            && f.local_port == local_port
            && f.remote_port == remote_port
            && now_ns.saturating_sub(f.last_seen_ns) < idle
    })
}

const ICMP: u8 = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMPV6: u8 = 58;
const SCTP: u8 = 132;
/// The protocol number of rules for every protocol (IANA-reserved, so no
/// packet's own).
pub const ANY: u8 = 255;

fn judge_grants(
    policy: &Policy,
    ip: &IpFacts,
    zone_id: u32,
    t: &Transport,
    now_ns: u64,
) -> Expected {
    let has_ports = matches!(t.proto, TCP | UDP | SCTP);
    // An any-protocol rule admits every protocol on every port.
    let admits = |rule: &Rule| {
        rule.proto == ANY
            || (rule.proto == t.proto
                && (!has_ports || (rule.port_lo..=rule.port_hi).contains(&t.dport)))
    };
    let mut live = Vec::new();
    let mut expired = false;
    for (index, grant) in policy.grants.iter().enumerate() {
        if wide(grant.src) != ip.src {
            continue;
        }
        let matches = grant.rules.iter().any(|rule| {
            let (net, len) = wide_net(rule.dst);
            admits(rule)
                && zone_of_net(&policy.zones, net, len) == Some(zone_id)
                && in_prefix(ip.dst, net, len)
        });
        if !matches {
            continue;
        }
        if now_ns < grant.expires_at_ns {
            live.push(index);
        } else {
            expired = true;
        }
    }
    if !live.is_empty() {
        return Expected {
            reason: Reason::PassGrant,
            zone_id,
            passed_by: live,
        };
    }
    let reason = if expired {
        Reason::DropExpired
    } else {
        Reason::DropNoGrant
    };
    Expected::new(reason, zone_id)
}

/// A header could not be read or is not acceptable.
struct Bad;

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// The next `n` bytes, or `None` when the frame ends first.
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    (b[i] as u16) << 8 | b[i + 1] as u16
}

fn u128_at(b: &[u8], i: usize) -> u128 {
    b[i..i + 16]
        .iter()
        .fold(0u128, |acc, byte| acc << 8 | *byte as u128)
}

fn mapped_v4(b: &[u8], i: usize) -> u128 {
    let v4 = b[i..i + 4]
        .iter()
        .fold(0u128, |acc, byte| acc << 8 | *byte as u128);
    0xffff << 32 | v4
}

enum Network {
    NotIp,
    Ip(IpFacts),
}

/// What the fixed IP header says, before any check that needs the zone.
struct IpFacts {
    v6: bool,
    src: u128,
    dst: u128,
    hop_limit: u8,
    header_ok: bool,
    /// IPv4: header length in bytes, total length, fragment offset.
    v4_header_len: usize,
    v4_total_len: usize,
    v4_frag_offset: u16,
    next_header: u8,
}

/// Ethernet, VLAN tags and the fixed IP header. `None`: truncated, or a
/// third VLAN tag (which could hide an IP packet from a two-tag parser).
fn read_network(r: &mut Reader) -> Option<Network> {
    let eth = r.take(14)?;
    let mut ethertype = u16_at(eth, 12);
    let mut tags = 0;
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        if tags == 2 {
            return None;
        }
        let tag = r.take(4)?;
        ethertype = u16_at(tag, 2);
        tags += 1;
    }
    match ethertype {
        0x0800 => {
            let h = r.take(20)?;
            let version = h[0] >> 4;
            let ihl_words = (h[0] & 0x0f) as usize;
            Some(Network::Ip(IpFacts {
                v6: false,
                src: mapped_v4(h, 12),
                dst: mapped_v4(h, 16),
                hop_limit: h[8],
                header_ok: version == 4 && ihl_words >= 5,
                v4_header_len: ihl_words * 4,
                v4_total_len: u16_at(h, 2) as usize,
                v4_frag_offset: u16_at(h, 6) & 0x1fff,
                next_header: h[9],
            }))
        }
        0x86dd => {
            let h = r.take(40)?;
            Some(Network::Ip(IpFacts {
                v6: true,
                src: u128_at(h, 8),
                dst: u128_at(h, 24),
                hop_limit: h[7],
                header_ok: h[0] >> 4 == 6,
                v4_header_len: 0,
                v4_total_len: 0,
                v4_frag_offset: 0,
                next_header: h[6],
            }))
        }
        _ => Some(Network::NotIp),
    }
}

struct Transport {
    proto: u8,
    dport: u16,
    icmp_type: u8,
    sport: u16,
    tcp_flags: u8,
    icmp_id: u16,
}

/// The transport header of a protected packet. `Ok(None)`: a non-first
/// fragment, which carries no transport header to judge.
fn read_transport(r: &mut Reader, ip: &IpFacts) -> Result<Option<Transport>, Bad> {
    if !ip.header_ok {
        return Err(Bad);
    }
    let proto = if ip.v6 {
        match walk_extensions(r, ip.next_header)? {
            Some(found) => found,
            None => return Ok(None),
        }
    } else {
        if ip.v4_total_len < ip.v4_header_len {
            return Err(Bad);
        }
        if ip.v4_frag_offset != 0 {
            return Ok(None);
        }
        // The fixed 20 bytes were read already; the options the header
        // length announces must all be there too.
        r.take(ip.v4_header_len - 20).ok_or(Bad)?;
        ip.next_header
    };
    let need = match proto {
        TCP => 20,
        UDP => 8,
        SCTP => 12,
        ICMP | ICMPV6 => 8,
        _ => 0,
    };
    let h = r.take(need).ok_or(Bad)?;
    let (dport, icmp_type) = match proto {
        TCP | UDP | SCTP => (u16_at(h, 2), 0),
        ICMP | ICMPV6 => (0, h[0]),
        _ => (0, 0),
    };
    Ok(Some(Transport {
        proto,
        dport,
        icmp_type,
        sport: if matches!(proto, TCP | UDP | SCTP) {
            u16_at(h, 0)
        } else {
            0
        },
        tcp_flags: if proto == TCP { h[13] } else { 0 },
        icmp_id: if matches!(proto, ICMP | ICMPV6) {
            u16_at(h, 4)
        } else {
            0
        },
    }))
}

/// Follows IPv6 extension headers from the fixed header's next header to
/// the transport protocol, leaving `r` at its header. `Ok(None)`: a
/// non-first fragment.
fn walk_extensions(r: &mut Reader, first: u8) -> Result<Option<u8>, Bad> {
    let mut next = first;
    let mut walked = 0;
    loop {
        let extension = matches!(next, 0 | 43 | 44 | 60 | 51 | 135 | 139 | 140 | 253 | 254);
        if !extension {
            return Ok(Some(next));
        }
        if walked == MAX_IPV6_EXT_HEADERS {
            return Err(Bad);
        }
        walked += 1;
        match next {
            0 | 43 | 60 => {
                let h = r.take(8).ok_or(Bad)?;
                next = h[0];
                // (hdr ext len + 1) * 8 bytes in all, 8 of them read: a
                // header cut short is malformed whatever follows it.
                r.take(h[1] as usize * 8).ok_or(Bad)?;
            }
            44 => {
                let h = r.take(8).ok_or(Bad)?;
                next = h[0];
                if u16_at(h, 2) >> 3 != 0 {
                    return Ok(None);
                }
            }
            // AH, mobility, HIP, shim6 and the experimental values: the
            // gate does not walk them, and their payload could hide the
            // real transport header.
            _ => return Err(Bad),
        }
    }
}

fn wide(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => 0xffff << 32 | u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn wide_net(net: IpNet) -> (u128, u8) {
    match net {
        IpNet::V4(n) => (wide(IpAddr::V4(n.network())), n.prefix_len() + 96),
        IpNet::V6(n) => (wide(IpAddr::V6(n.network())), n.prefix_len()),
    }
}

fn mask(len: u8) -> u128 {
    match len {
        0 => 0,
        len => u128::MAX << (128 - len.min(128) as u32),
    }
}

fn in_prefix(addr: u128, net: u128, len: u8) -> bool {
    addr & mask(len) == net & mask(len)
}

/// Longest-prefix match of one address over the zones.
fn zone_of_addr(zones: &[(IpNet, u32)], addr: u128) -> Option<u32> {
    zone_of_net(zones, addr, 128)
}

/// The zone whose longest prefix holds all of `net/len`.
fn zone_of_net(zones: &[(IpNet, u32)], net: u128, len: u8) -> Option<u32> {
    zones
        .iter()
        .map(|(zone, id)| (wide_net(*zone), *id))
        .filter(|((znet, zlen), _)| *zlen <= len && in_prefix(net, *znet, *zlen))
        .max_by_key(|((_, zlen), _)| *zlen)
        .map(|(_, id)| id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{Ext, Frame, L4};

    fn policy() -> Policy {
        Policy {
            zones: vec![("10.9.0.0/16".parse().unwrap(), 1)],
            grants: vec![Grant {
                src: "192.0.2.1".parse().unwrap(),
                rules: vec![Rule {
                    dst: "10.9.1.0/24".parse().unwrap(),
                    proto: TCP,
                    port_lo: 22,
                    port_hi: 22,
                }],
                expires_at_ns: 100,
            }],
            ..Policy::default()
        }
    }

    fn ssh(dst: &str) -> Frame {
        Frame::v4(
            "192.0.2.1".parse().unwrap(),
            dst.parse().unwrap(),
            L4::Tcp { dport: 22 },
        )
    }

    #[test]
    fn grant_passes_until_expiry() {
        let p = policy();
        let frame = ssh("10.9.1.1").bytes();
        assert_eq!(expect(&frame, &p, 99).reason, Reason::PassGrant);
        assert_eq!(expect(&frame, &p, 99).passed_by, vec![0]);
        assert_eq!(expect(&frame, &p, 100).reason, Reason::DropExpired);
        assert_eq!(
            expect(&ssh("10.9.2.1").bytes(), &p, 0).reason,
            Reason::DropNoGrant
        );
        assert_eq!(
            expect(&ssh("10.10.0.1").bytes(), &p, 0).reason,
            Reason::PassUnprotected
        );
    }

    #[test]
    fn truncated_transport_is_malformed_only_when_protected() {
        let p = policy();
        let cut = |f: Frame| expect(&f.truncate(14 + 20 + 19), &p, 0);
        assert_eq!(cut(ssh("10.9.1.1")).reason, Reason::DropMalformed);
        assert_eq!(cut(ssh("10.10.1.1")).reason, Reason::PassUnprotected);
    }

    #[test]
    fn ext_header_limit() {
        let p = Policy {
            zones: vec![("2001:db8::/32".parse().unwrap(), 2)],
            ..Policy::default()
        };
        let frame = |n: usize| {
            Frame::v6(
                "2001:db8:1::1".parse().unwrap(),
                "2001:db8::2".parse().unwrap(),
                L4::Tcp { dport: 22 },
            )
            .ext(&vec![Ext::DestOpts { len8: 0 }; n])
            .bytes()
        };
        assert_eq!(
            expect(&frame(MAX_IPV6_EXT_HEADERS), &p, 0).reason,
            Reason::DropNoGrant
        );
        assert_eq!(
            expect(&frame(MAX_IPV6_EXT_HEADERS + 1), &p, 0).reason,
            Reason::DropMalformed
        );
    }
}
