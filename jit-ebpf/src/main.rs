//! jitgate's XDP program: drops every packet to a protected prefix unless a
//! live grant for its exact source, destination prefix, protocol and port is
//! in `JG_GRANTS`. Expiry is checked here against the boot clock, so a grant
//! ends on time even when no agent is running. In a host zone (the gate's
//! own machine) replies on flows the machine started itself also pass; the
//! TC egress program in `track` records those flows.
#![no_std]
#![no_main]
// The bpfel target offers no `AtomicU64::fetch_add`; the intrinsic lowers to
// the BPF atomic add instruction.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod grants;
mod maps;
mod parse;
mod track;

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_ktime_get_boot_ns,
    macros::xdp,
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use jit_common::{counters::counter_index, proto, DeniedEvent, Reason, ZONE_FLAG_HOST};

use crate::{
    grants::check_grant,
    maps::{JG_CONFIG, JG_COUNTERS, JG_DENIED, JG_GSTATS, JG_RATE, JG_ZONES},
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
    let host_zone = zone.flags & ZONE_FLAG_HOST != 0;
    let reason = match parse_l4(ctx, &ip) {
        Err(_) => Reason::DropMalformed,
        Ok(L4::Fragment) => Reason::DropFragment,
        Ok(L4::Flow {
            proto,
            port_or_type,
            sport_or_id,
            tcp_flags,
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
            let now = unsafe { bpf_ktime_get_boot_ns() };
            let (mut reason, slot) = check_grant(&ip.src, &ip.dst, zone_id, proto, dport, now);
            if reason == Reason::PassGrant {
                record_grant_use(slot, now, ctx);
                if host_zone && proto == proto::UDP {
                    track::note_granted_udp(&ip, dport, sport_or_id, now);
                }
            } else if host_zone
                && track::is_tracked_reply(&ip, proto, port_or_type, sport_or_id, tcp_flags, now)
            {
                reason = Reason::PassTracked;
            }
            if !reason.is_pass() {
                deny(ctx, &ip, zone_id, proto, dport, reason);
            }
            return (reason, zone_id);
        }
    };
    deny(ctx, &ip, zone_id, 0, 0, reason);
    (reason, zone_id)
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
