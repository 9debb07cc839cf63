//! Grants as the kernel sees them.
//!
//! One hash entry per (source address, zone, protocol) flow holds up to
//! `MAX_RULES_PER_FLOW` rules, so a packet costs one exact-match lookup
//! however many grants the gate holds.

/// Rules one flow key can hold. The agent refuses a grant that would need
/// more, rather than dropping an older rule silently.
pub const MAX_RULES_PER_FLOW: usize = 8;

/// Key of the grant hash map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Exact source address, 16-byte form (IPv4-mapped for IPv4).
    pub src: [u8; 16],
    /// Zone id of the destination, from the zone trie.
    pub zone_id: u32,
    /// IP protocol number (after IPv6 extension headers).
    pub proto: u8,
    /// Explicit padding, must be zero.
    pub _pad: [u8; 3],
}

/// One destination rule of a grant.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantRule {
    /// Destination prefix address, 16-byte form, host bits zero.
    pub dst: [u8; 16],
    /// Expiry on the boot clock (`bpf_ktime_get_boot_ns`). A rule is live
    /// while `now < expires_at_ns`; 0 marks an unused slot.
    pub expires_at_ns: u64,
    /// Index into the per-grant stats array.
    pub stats_index: u32,
    /// Lowest destination port allowed (TCP, UDP, SCTP only).
    pub port_lo: u16,
    /// Highest destination port allowed, inclusive.
    pub port_hi: u16,
    /// Destination prefix length in the 128-bit space (IPv4 + 96).
    pub prefix_len: u8,
    /// Explicit padding, must be zero.
    pub _pad: [u8; 7],
}

/// Value of the grant hash map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantSet {
    /// Number of slots in use; slots at and after `count` are ignored.
    pub count: u32,
    /// Explicit padding, must be zero.
    pub _pad: u32,
    pub rules: [GrantRule; MAX_RULES_PER_FLOW],
}

/// Per-grant traffic totals, updated atomically by the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantStats {
    pub packets: u64,
    pub bytes: u64,
    /// Boot clock ns of the first packet, 0 if none yet.
    pub first_seen_ns: u64,
    /// Boot clock ns of the latest packet, 0 if none yet.
    pub last_seen_ns: u64,
}
