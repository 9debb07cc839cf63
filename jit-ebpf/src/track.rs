//! Host mode: the TC egress program that records the flows a host-zone
//! address starts, and the XDP side's question "is this the reply to one?".
//!
//! Only the host's own packets create or refresh an outbound entry, so a
//! peer (or someone spoofing one) cannot keep a flow alive by sending, and
//! an idle flow closes on its own. Creation rules:
//! - TCP: a SYN without ACK (the host opens a connection); any other
//!   outbound segment only refreshes an entry that exists.
//! - ICMP / ICMPv6: an echo request (its identifier stands in for a port).
//! - UDP: any datagram, unless it answers a peer that a live grant lets
//!   in, or a peer whose granted datagrams the gate recently saw
//!   (`TRACK_INBOUND`): otherwise a granted client's flow would outlive its
//!   grant through the host's answers.

use aya_ebpf::{
    bindings::TC_ACT_OK, helpers::bpf_ktime_get_boot_ns, macros::classifier, maps::lpm_trie::Key,
    programs::TcContext,
};
use jit_common::{
    proto, Reason, TrackKey, TrackValue, TRACK_INBOUND, TRACK_OUTBOUND, ZONE_FLAG_HOST,
};

use crate::{
    grants::check_grant,
    maps::{JG_FLOWS, JG_TRACKCFG, JG_ZONES},
    parse::{parse_l3, parse_l4, IpHeader, L3, L4, TCP_ACK, TCP_SYN},
};

const ICMP_ECHO_REPLY: u16 = 0;
const ICMP_ECHO_REQUEST: u16 = 8;
const ICMPV6_ECHO_REQUEST: u16 = 128;
const ICMPV6_ECHO_REPLY: u16 = 129;

/// Records outbound flows of host-zone addresses. It never drops: the
/// gate filters inbound traffic only, and a tracker failure just leaves a
/// flow unrecorded, so its replies are judged by grants alone.
#[classifier]
pub fn jit_track(ctx: TcContext) -> i32 {
    track(&ctx);
    TC_ACT_OK
}

#[inline(always)]
fn track(ctx: &TcContext) {
    let Ok(L3::Ip(ip)) = parse_l3(ctx) else {
        return;
    };
    let Some(zone) = JG_ZONES.get(Key::new(128, ip.src)) else {
        return;
    };
    if zone.flags & ZONE_FLAG_HOST == 0 {
        return;
    }
    let zone_id = zone.zone_id;
    let Ok(L4::Flow {
        proto,
        port_or_type,
        sport_or_id,
        tcp_flags,
    }) = parse_l4(ctx, &ip)
    else {
        return;
    };
    let (local_port, remote_port, starts) = match proto {
        proto::TCP => (
            sport_or_id,
            port_or_type,
            tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        ),
        proto::UDP => (sport_or_id, port_or_type, true),
        proto::ICMP if ip.family == 4 && port_or_type == ICMP_ECHO_REQUEST => {
            (sport_or_id, 0, true)
        }
        proto::ICMPV6 if ip.family == 6 && port_or_type == ICMPV6_ECHO_REQUEST => {
            (sport_or_id, 0, true)
        }
        _ => return,
    };
    let key = flow_key(&ip.src, &ip.dst, local_port, remote_port, proto);
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let idle = idle_ns(proto);
    if let Some(entry) = JG_FLOWS.get_ptr_mut(&key) {
        // SAFETY: points into the LRU map's element; a concurrent writer
        // stores the same kind of value, last writer wins.
        unsafe {
            let fresh = now.saturating_sub((*entry).last_seen_ns) < idle;
            // A host-started flow lives on while the host speaks on it; a
            // granted peer's flow stays the peer's while it is fresh.
            if (*entry).direction == TRACK_OUTBOUND
                || ((*entry).direction == TRACK_INBOUND && fresh)
            {
                (*entry).last_seen_ns = now;
                return;
            }
        }
    }
    if !starts {
        return;
    }
    let mut direction = TRACK_OUTBOUND;
    if proto == proto::UDP {
        let (reverse, _) = check_grant(&ip.dst, &ip.src, zone_id, proto, local_port, now);
        if reverse == Reason::PassGrant {
            direction = TRACK_INBOUND;
        }
    }
    let value = TrackValue {
        last_seen_ns: now,
        direction,
        _pad: 0,
    };
    // A full table evicts its least recently used flow: forgetting fails
    // closed. An insert error leaves the flow unrecorded, which does too.
    let _ = JG_FLOWS.insert(&key, &value, 0);
}

/// Whether an inbound packet to a host zone is the reply on a flow the host
/// started and used within the idle timeout. A TCP SYN without ACK opens a
/// new connection and never rides on the exception; ICMP needs an echo
/// reply to the host's echo request.
#[inline(always)]
pub fn is_tracked_reply(
    ip: &IpHeader,
    proto: u8,
    port_or_type: u16,
    sport_or_id: u16,
    tcp_flags: u8,
    now: u64,
) -> bool {
    let (local_port, remote_port) = match proto {
        proto::TCP => {
            if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
                return false;
            }
            (port_or_type, sport_or_id)
        }
        proto::UDP => (port_or_type, sport_or_id),
        proto::ICMP if ip.family == 4 && port_or_type == ICMP_ECHO_REPLY => (sport_or_id, 0),
        proto::ICMPV6 if ip.family == 6 && port_or_type == ICMPV6_ECHO_REPLY => (sport_or_id, 0),
        _ => return false,
    };
    let key = flow_key(&ip.dst, &ip.src, local_port, remote_port, proto);
    // SAFETY: read in place under RCU; a torn read of `last_seen_ns` cannot
    // happen (one aligned 8-byte store).
    let Some(entry) = (unsafe { JG_FLOWS.get(&key) }) else {
        return false;
    };
    // Inbound packets never refresh the entry: only the host's own traffic
    // keeps a flow alive, so a peer or a spoofer cannot hold it open.
    entry.direction == TRACK_OUTBOUND && now.saturating_sub(entry.last_seen_ns) < idle_ns(proto)
}

/// A granted UDP datagram into a host zone: remember that the peer started
/// this flow, so the host's answers do not make it a host-started one.
/// A host-started entry for the same tuple is left as it is.
#[inline(always)]
pub fn note_granted_udp(ip: &IpHeader, dport: u16, sport: u16, now: u64) {
    let key = flow_key(&ip.dst, &ip.src, dport, sport, proto::UDP);
    if let Some(entry) = JG_FLOWS.get_ptr_mut(&key) {
        // SAFETY: as in `track`.
        unsafe {
            if (*entry).direction != TRACK_OUTBOUND {
                (*entry).direction = TRACK_INBOUND;
                (*entry).last_seen_ns = now;
            }
        }
        return;
    }
    let value = TrackValue {
        last_seen_ns: now,
        direction: TRACK_INBOUND,
        _pad: 0,
    };
    let _ = JG_FLOWS.insert(&key, &value, 0);
}

#[inline(always)]
fn flow_key(
    local: &[u8; 16],
    remote: &[u8; 16],
    local_port: u16,
    remote_port: u16,
    proto: u8,
) -> TrackKey {
    TrackKey {
        local: *local,
        remote: *remote,
        local_port,
        remote_port,
        proto,
        _pad: [0; 3],
    }
}

/// The idle timeout for a protocol; 0 (nothing passes) when the agent has
/// not written one.
#[inline(always)]
fn idle_ns(proto: u8) -> u64 {
    let Some(cfg) = JG_TRACKCFG.get(0) else {
        return 0;
    };
    match proto {
        proto::TCP => cfg.tcp_idle_ns,
        proto::UDP => cfg.udp_idle_ns,
        proto::ICMP | proto::ICMPV6 => cfg.icmp_idle_ns,
        _ => 0,
    }
}
