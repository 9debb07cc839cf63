//! jitgate's XDP program: drops every packet to a protected prefix unless a
//! live grant for its exact source, destination prefix, protocol and port is
//! in `JG_GRANTS`. Expiry is checked here against the boot clock, so a grant
//! ends on time even when no agent is running.
#![no_std]
#![no_main]
// The bpfel target offers no `AtomicU64::fetch_add`; the intrinsic lowers to
// the BPF atomic add instruction.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod maps;
mod parse;

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_ktime_get_boot_ns,
    macros::xdp,
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use jit_common::{
    counters::counter_index, proto, DeniedEvent, FlowKey, Reason, MAX_RULES_PER_FLOW,
};

use crate::{
    maps::{JG_CONFIG, JG_COUNTERS, JG_DENIED, JG_GRANTS, JG_GSTATS, JG_RATE, JG_ZONES},
    parse::{parse_l3, parse_l4, IpHeader, L3, L4},
};

const NDISC_FIRST: u16 = 133;
const NDISC_LAST: u16 = 137;
/// RFC 4861 §7.1.1: neighbour discovery messages carry hop limit 255, so an
/// off-link sender cannot forge one that passes.
const NDISC_HOP_LIMIT: u8 = 255;
const NS_PER_SEC: u64 = 1_000_000_000;

#[xdp]
pub fn jit_gate(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (reason, zone_id) = classify(&ctx);
    count(zone_id, reason, len);
    if reason.is_pass() {
        XDP_PASS
    } else {
        XDP_DROP
    }
}

/// Decides a packet's fate. Anything that cannot be parsed far enough to
/// prove it unprotected is dropped.
#[inline(always)]
fn classify(ctx: &XdpContext) -> (Reason, u32) {
    let ip = match parse_l3(ctx) {
        Ok(L3::NonIp) => return (Reason::PassNonIp, 0),
        Ok(L3::Ip(ip)) => ip,
        Err(_) => return (Reason::DropMalformed, 0),
    };
    let Some(zone) = JG_ZONES.get(Key::new(128, ip.dst)) else {
        return (Reason::PassUnprotected, 0);
    };
    let zone_id = zone.zone_id;
    let reason = match parse_l4(ctx, &ip) {
        Err(_) => Reason::DropMalformed,
        Ok(L4::Fragment) => Reason::DropFragment,
        Ok(L4::Flow {
            proto,
            port_or_type,
        }) => {
            if ip.family == 6
                && proto == proto::ICMPV6
                && (NDISC_FIRST..=NDISC_LAST).contains(&port_or_type)
                && ip.hop_limit == NDISC_HOP_LIMIT
            {
                return (Reason::PassNeighbor, zone_id);
            }
            let dport = if proto::has_ports(proto) {
                port_or_type
            } else {
                0
            };
            let reason = check_grant(&ip, zone_id, proto, dport, ctx);
            if !reason.is_pass() {
                deny(ctx, &ip, zone_id, proto, dport, reason);
            }
            return (reason, zone_id);
        }
    };
    deny(ctx, &ip, zone_id, 0, 0, reason);
    (reason, zone_id)
}

/// The grant rule: exact source, destination inside the rule's prefix,
/// protocol, and (for TCP, UDP, SCTP) destination port inside the range,
/// before the rule's boot-clock expiry. Rules for any protocol live under
/// `proto::ANY` and are consulted only when the exact protocol has no match.
#[inline(always)]
fn check_grant(ip: &IpHeader, zone_id: u32, proto: u8, dport: u16, ctx: &XdpContext) -> Reason {
    let exact = match_flow(ip, zone_id, proto, proto, dport, ctx);
    if exact == Reason::PassGrant {
        return exact;
    }
    let any = match_flow(ip, zone_id, proto::ANY, proto, dport, ctx);
    if any == Reason::PassGrant || exact == Reason::DropNoGrant {
        any
    } else {
        exact
    }
}

#[inline(always)]
fn match_flow(
    ip: &IpHeader,
    zone_id: u32,
    key_proto: u8,
    proto: u8,
    dport: u16,
    ctx: &XdpContext,
) -> Reason {
    let key = FlowKey {
        src: ip.src,
        zone_id,
        proto: key_proto,
        _pad: [0; 3],
    };
    // SAFETY: the value is read in place under RCU; a concurrent update
    // replaces the whole element, so we see either the old or the new set.
    let Some(set) = (unsafe { JG_GRANTS.get(&key) }) else {
        return Reason::DropNoGrant;
    };
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let (dst_hi, dst_lo) = halves(&ip.dst);
    let ports = proto::has_ports(proto);
    let mut expired = false;
    let count = set.count as usize;
    for i in 0..MAX_RULES_PER_FLOW {
        if i >= count {
            break;
        }
        let rule = &set.rules[i];
        let (rule_hi, rule_lo) = halves(&rule.dst);
        let (mask_hi, mask_lo) = prefix_masks(rule.prefix_len);
        if dst_hi & mask_hi != rule_hi || dst_lo & mask_lo != rule_lo {
            continue;
        }
        if ports && (dport < rule.port_lo || dport > rule.port_hi) {
            continue;
        }
        if now >= rule.expires_at_ns {
            expired = true;
            continue;
        }
        record_grant_use(rule.stats_index, now, ctx);
        return Reason::PassGrant;
    }
    if expired {
        Reason::DropExpired
    } else {
        Reason::DropNoGrant
    }
}

#[inline(always)]
fn halves(addr: &[u8; 16]) -> (u64, u64) {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&addr[..8]);
    lo.copy_from_slice(&addr[8..]);
    (u64::from_be_bytes(hi), u64::from_be_bytes(lo))
}

/// Masks for a prefix length in the 128-bit space, without shifting by 64
/// (undefined in Rust and in BPF).
#[inline(always)]
fn prefix_masks(len: u8) -> (u64, u64) {
    let len = if len > 128 { 128 } else { len as u32 };
    if len == 0 {
        (0, 0)
    } else if len < 64 {
        (u64::MAX << (64 - len), 0)
    } else if len == 64 {
        (u64::MAX, 0)
    } else if len < 128 {
        (u64::MAX, u64::MAX << (128 - len))
    } else {
        (u64::MAX, u64::MAX)
    }
}

#[inline(always)]
fn record_grant_use(index: u32, now: u64, ctx: &XdpContext) {
    let Some(stats) = JG_GSTATS.get_ptr_mut(index) else {
        return;
    };
    let len = (ctx.data_end() - ctx.data()) as u64;
    // SAFETY: `stats` points into the array map's value; concurrent CPUs
    // update the totals with atomic adds, the timestamps are last-writer-wins.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*stats).packets, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*stats).bytes, len);
        if (*stats).first_seen_ns == 0 {
            (*stats).first_seen_ns = now;
        }
        (*stats).last_seen_ns = now;
    }
}

#[inline(always)]
fn count(zone_id: u32, reason: Reason, len: u64) {
    if let Some(cell) = JG_COUNTERS.get_ptr_mut(counter_index(zone_id, reason)) {
        // SAFETY: per-CPU cell; XDP runs with preemption off on this CPU.
        unsafe {
            (*cell).packets += 1;
            (*cell).bytes += len;
        }
    }
}

/// Reports a denied attempt to the agent, at most `denied_events_per_sec`
/// per CPU, so a flood cannot starve userspace.
#[inline(always)]
fn deny(ctx: &XdpContext, ip: &IpHeader, zone_id: u32, proto: u8, dport: u16, reason: Reason) {
    debug!(
        ctx,
        "jitgate drop zone {} proto {} port {} reason {}", zone_id, proto, dport, reason as u32
    );
    let limit = match JG_CONFIG.get(0) {
        Some(cfg) => cfg.denied_events_per_sec,
        None => 0,
    };
    let Some(rate) = JG_RATE.get_ptr_mut(0) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: per-CPU cell; XDP runs with preemption off on this CPU.
    unsafe {
        if now.wrapping_sub((*rate).window_start_ns) >= NS_PER_SEC {
            (*rate).window_start_ns = now;
            (*rate).emitted = 0;
        }
        if (*rate).emitted >= limit {
            (*rate).suppressed = (*rate).suppressed.wrapping_add(1);
            return;
        }
        (*rate).emitted += 1;
    }
    if let Some(mut entry) = JG_DENIED.reserve::<DeniedEvent>(0) {
        entry.write(DeniedEvent {
            time_ns: now,
            src: ip.src,
            dst: ip.dst,
            zone_id,
            reason: reason as u32,
            dport,
            proto,
            family: ip.family,
            _pad: 0,
        });
        entry.submit(0);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
