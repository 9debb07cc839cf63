//! Host mode: flows the protected machine starts itself.
//!
//! aya 0.14 cannot call the conntrack kfuncs, so the gate keeps its own
//! small flow table. A TC egress program records each flow a host-zone
//! address opens; the XDP gate lets a packet into a host zone without a
//! grant only when it is the reverse of such a live flow. The table is an
//! LRU hash: eviction only forgets flows, which fails closed.

/// Key of the flow table, from the protected host's point of view.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TrackKey {
    /// The host's own address (a host-zone address), 16-byte form.
    pub local: [u8; 16],
    /// The peer's address, 16-byte form.
    pub remote: [u8; 16],
    /// The host's port (TCP, UDP), or the echo identifier (ICMP, ICMPv6).
    pub local_port: u16,
    /// The peer's port (TCP, UDP); 0 for ICMP.
    pub remote_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Explicit padding, must be zero.
    pub _pad: [u8; 3],
}

/// Value of the flow table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackValue {
    /// Boot clock ns (`bpf_ktime_get_boot_ns`) of the host's latest packet
    /// on the flow (or, for `TRACK_INBOUND`, of the latest granted one).
    pub last_seen_ns: u64,
    /// `TRACK_OUTBOUND` or `TRACK_INBOUND`; anything else passes nothing.
    pub direction: u32,
    /// Explicit padding, must be zero.
    pub _pad: u32,
}

/// The host started the flow: its replies may pass while it is not idle.
pub const TRACK_OUTBOUND: u32 = 1;
/// A granted peer started the flow (UDP only): the host's answers on it
/// must not turn it into a host-started flow that outlives the grant.
/// Such an entry never lets anything in.
pub const TRACK_INBOUND: u32 = 2;

/// Idle timeouts of tracked flows, written by the agent into
/// `maps::TRACK_CONFIG` at index 0. A flow whose last host packet is this
/// old lets nothing in. Zero (an unwritten config) lets nothing in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackConfig {
    pub tcp_idle_ns: u64,
    pub udp_idle_ns: u64,
    /// ICMP and ICMPv6 echo.
    pub icmp_idle_ns: u64,
}

/// Default idle timeouts in seconds (policy keys `host_*_idle` in `[gate]`).
pub const DEFAULT_TCP_IDLE_SECS: u64 = 300;
pub const DEFAULT_UDP_IDLE_SECS: u64 = 30;
pub const DEFAULT_ICMP_IDLE_SECS: u64 = 10;
