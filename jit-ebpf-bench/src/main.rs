//! Baselines for the benchmarks (issue 4): what any XDP program costs
//! (`bench_drop`), what the gate's parsing costs before it looks anything up
//! (`bench_parse`), and for floods through a real interface a drop that
//! counts (`bench_count_drop`) and a bare pass (`bench_pass`). `bench_parse`
//! compiles the gate's own `parse.rs`, so the two can never parse differently.
#![no_std]
#![no_main]

#[path = "../../jit-ebpf/src/parse.rs"]
#[allow(dead_code)]
mod parse;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};

use crate::parse::{parse_l3, parse_l4, L3, L4};

/// The floor: the cost of running any XDP program at all.
#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    XDP_DROP
}

/// Packets `bench_count_drop` dropped, per CPU.
#[map]
static BENCH_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The floor of a flood's drop: XDP_DROP plus the one per-CPU counter any
/// dropper needs to report what it dropped.
#[xdp]
pub fn bench_count_drop(_ctx: XdpContext) -> u32 {
    if let Some(cell) = BENCH_DROPS.get_ptr_mut(0) {
        // SAFETY: per-CPU cell; XDP runs with preemption off on this CPU.
        unsafe { *cell += 1 };
    }
    XDP_DROP
}

/// The floor of granted traffic: the XDP hook with a program that passes all.
#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Parses Ethernet, VLAN tags, IPv4/IPv6 with extension headers and the
/// transport header exactly as `jit_gate` does, then decides from the parsed
/// fields so the parse cannot be optimised away, with no map lookup.
#[xdp]
pub fn bench_parse(ctx: XdpContext) -> u32 {
    let ip = match parse_l3(&ctx) {
        Ok(L3::Ip(ip)) => ip,
        Ok(L3::NonIp) => return XDP_PASS,
        Err(_) => return XDP_DROP,
    };
    match parse_l4(&ctx, &ip) {
        // A verdict that depends on every parsed field; the benchmark's
        // packets never satisfy it, so they take the same path as a drop.
        Ok(L4::Flow {
            proto,
            port_or_type,
            sport_or_id,
            tcp_flags,
        }) if proto == 0xfe
            && port_or_type == u16::from(ip.src[15] ^ ip.dst[15])
            && sport_or_id == u16::from(tcp_flags) =>
        {
            XDP_PASS
        }
        _ => XDP_DROP,
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
