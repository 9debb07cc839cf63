//! Types shared by the jitgate XDP program and its userspace agent.
//!
//! Every type here is `#[repr(C)]`, `Copy` and free of implicit padding, so
//! the kernel and userspace agree on each byte. `layout` tests (in jit-agent)
//! check the sizes and offsets both sides rely on.
#![no_std]

pub mod counters;
pub mod event;
pub mod grant;
mod layout;
pub mod maps;
pub mod track;
pub mod zone;

pub use counters::{Counter, Reason, NUM_REASONS};
pub use event::DeniedEvent;
pub use grant::{FlowKey, GrantRule, GrantSet, GrantStats, MAX_RULES_PER_FLOW};
pub use track::{TrackConfig, TrackKey, TrackValue, TRACK_INBOUND, TRACK_OUTBOUND};
pub use zone::{ZoneKey, ZoneValue, MAX_ZONES, ZONE_FLAG_HOST};

/// IANA protocol numbers the gate parses.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
    /// Flow-key protocol of rules that admit every protocol. 255 is
    /// reserved by IANA, so no packet carries it.
    pub const ANY: u8 = 255;

    /// Protocols whose grants are narrowed by destination port.
    pub const fn has_ports(proto: u8) -> bool {
        matches!(proto, TCP | UDP | SCTP)
    }
}

/// Addresses are stored as 16 bytes: IPv6 as is, IPv4 as an IPv4-mapped
/// IPv6 address (`::ffff:a.b.c.d`), so one map serves both families.
pub const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// Prefix lengths of IPv4 prefixes grow by this in the 128-bit space.
pub const V4_PREFIX_OFFSET: u8 = 96;

/// Maps an IPv4 address (network order bytes) into the 16-byte form.
#[inline(always)]
pub const fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Global settings written by the agent into `maps::CONFIG` at index 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateConfig {
    /// Denied-attempt events each CPU may emit per second; the rest are
    /// counted in `RateState::suppressed` so a flood cannot starve the agent.
    pub denied_events_per_sec: u32,
    /// Reserved, must be zero.
    pub flags: u32,
}

/// Per-CPU token window for denied-attempt events.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    /// Start of the current one-second window, boot clock nanoseconds.
    pub window_start_ns: u64,
    /// Events emitted in the current window.
    pub emitted: u32,
    /// Events suppressed by the limit since load (for the agent's metrics).
    pub suppressed: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type below is #[repr(C)], Copy, made of integers and byte
    // arrays only, with explicit padding fields, so any bit pattern is valid.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GrantRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GrantSet {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GrantStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ZoneValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DeniedEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GateConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RateState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TrackKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TrackValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TrackConfig {}
}
