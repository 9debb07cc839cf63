//! Compile-time proof of the shared layouts. This crate is compiled for the
//! BPF target (inside jit-ebpf) and for the host (inside jit-agent); both
//! builds evaluate these assertions, so a layout the two targets disagree
//! on fails one of the builds instead of misreading a map at run time.

use core::mem::{offset_of, size_of};

use crate::{
    Counter, DeniedEvent, FlowKey, GateConfig, GrantRule, GrantSet, GrantStats, RateState,
    TrackConfig, TrackKey, TrackValue, ZoneValue,
};

const _: () = {
    assert!(size_of::<FlowKey>() == 24);
    assert!(offset_of!(FlowKey, src) == 0);
    assert!(offset_of!(FlowKey, zone_id) == 16);
    assert!(offset_of!(FlowKey, proto) == 20);
    assert!(offset_of!(FlowKey, _pad) == 21);

    assert!(size_of::<GrantRule>() == 40);
    assert!(offset_of!(GrantRule, dst) == 0);
    assert!(offset_of!(GrantRule, expires_at_ns) == 16);
    assert!(offset_of!(GrantRule, stats_index) == 24);
    assert!(offset_of!(GrantRule, port_lo) == 28);
    assert!(offset_of!(GrantRule, port_hi) == 30);
    assert!(offset_of!(GrantRule, prefix_len) == 32);
    assert!(offset_of!(GrantRule, _pad) == 33);

    assert!(size_of::<GrantSet>() == 8 + 40 * crate::MAX_RULES_PER_FLOW);
    assert!(offset_of!(GrantSet, count) == 0);
    assert!(offset_of!(GrantSet, rules) == 8);

    assert!(size_of::<GrantStats>() == 32);
    assert!(offset_of!(GrantStats, packets) == 0);
    assert!(offset_of!(GrantStats, bytes) == 8);
    assert!(offset_of!(GrantStats, first_seen_ns) == 16);
    assert!(offset_of!(GrantStats, last_seen_ns) == 24);

    assert!(size_of::<ZoneValue>() == 8);
    assert!(offset_of!(ZoneValue, zone_id) == 0);
    assert!(offset_of!(ZoneValue, flags) == 4);

    assert!(size_of::<Counter>() == 16);
    assert!(offset_of!(Counter, packets) == 0);
    assert!(offset_of!(Counter, bytes) == 8);

    assert!(size_of::<DeniedEvent>() == 56);
    assert!(offset_of!(DeniedEvent, time_ns) == 0);
    assert!(offset_of!(DeniedEvent, src) == 8);
    assert!(offset_of!(DeniedEvent, dst) == 24);
    assert!(offset_of!(DeniedEvent, zone_id) == 40);
    assert!(offset_of!(DeniedEvent, reason) == 44);
    assert!(offset_of!(DeniedEvent, dport) == 48);
    assert!(offset_of!(DeniedEvent, proto) == 50);
    assert!(offset_of!(DeniedEvent, family) == 51);
    assert!(offset_of!(DeniedEvent, _pad) == 52);

    assert!(size_of::<GateConfig>() == 8);
    assert!(offset_of!(GateConfig, denied_events_per_sec) == 0);
    assert!(offset_of!(GateConfig, flags) == 4);

    assert!(size_of::<RateState>() == 16);
    assert!(offset_of!(RateState, window_start_ns) == 0);
    assert!(offset_of!(RateState, emitted) == 8);
    assert!(offset_of!(RateState, suppressed) == 12);

    assert!(size_of::<TrackKey>() == 40);
    assert!(offset_of!(TrackKey, local) == 0);
    assert!(offset_of!(TrackKey, remote) == 16);
    assert!(offset_of!(TrackKey, local_port) == 32);
    assert!(offset_of!(TrackKey, remote_port) == 34);
    assert!(offset_of!(TrackKey, proto) == 36);
    assert!(offset_of!(TrackKey, _pad) == 37);

    assert!(size_of::<TrackValue>() == 16);
    assert!(offset_of!(TrackValue, last_seen_ns) == 0);
    assert!(offset_of!(TrackValue, direction) == 8);
    assert!(offset_of!(TrackValue, _pad) == 12);

    assert!(size_of::<TrackConfig>() == 24);
    assert!(offset_of!(TrackConfig, tcp_idle_ns) == 0);
    assert!(offset_of!(TrackConfig, udp_idle_ns) == 8);
    assert!(offset_of!(TrackConfig, icmp_idle_ns) == 16);
};
