//! Verdict counters, per CPU, indexed by `zone_id * NUM_REASONS + reason`.

/// Why a packet got its verdict.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Passed: a live grant matched.
    PassGrant = 0,
    /// Passed: destination is in no zone.
    PassUnprotected = 1,
    /// Passed: not IPv4 or IPv6 (ARP and others).
    PassNonIp = 2,
    /// Passed: IPv6 neighbour discovery (ICMPv6 133..=137, hop limit 255).
    PassNeighbor = 3,
    /// Dropped: no grant matched.
    DropNoGrant = 4,
    /// Dropped: the only matching grant has expired.
    DropExpired = 5,
    /// Dropped: truncated or malformed headers, unknown extension headers.
    DropMalformed = 6,
    /// Dropped: a non-first fragment (it carries no ports).
    DropFragment = 7,
    /// Passed: a reply on a flow the protected host itself started (host
    /// zones only, see `track`). Numbered last so the older reasons keep
    /// their values in counters and audit records.
    PassTracked = 8,
}

pub const NUM_REASONS: u32 = 9;

impl Reason {
    pub const ALL: [Reason; NUM_REASONS as usize] = [
        Reason::PassGrant,
        Reason::PassUnprotected,
        Reason::PassNonIp,
        Reason::PassNeighbor,
        Reason::DropNoGrant,
        Reason::DropExpired,
        Reason::DropMalformed,
        Reason::DropFragment,
        Reason::PassTracked,
    ];

    pub const fn is_pass(self) -> bool {
        matches!(
            self,
            Reason::PassGrant
                | Reason::PassUnprotected
                | Reason::PassNonIp
                | Reason::PassNeighbor
                | Reason::PassTracked
        )
    }

    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassGrant => "grant",
            Reason::PassUnprotected => "unprotected",
            Reason::PassNonIp => "non_ip",
            Reason::PassNeighbor => "neighbor_discovery",
            Reason::DropNoGrant => "no_grant",
            Reason::DropExpired => "expired",
            Reason::DropMalformed => "malformed",
            Reason::DropFragment => "fragment",
            Reason::PassTracked => "tracked",
        }
    }

    pub const fn from_u32(v: u32) -> Option<Reason> {
        if v < NUM_REASONS {
            Some(Reason::ALL[v as usize])
        } else {
            None
        }
    }
}

/// Packets and bytes for one (zone, reason) cell on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Entries in the counter array: zone 0 ("no zone") plus every zone id.
pub const COUNTER_ENTRIES: u32 = (super::MAX_ZONES + 1) * NUM_REASONS;

#[inline(always)]
pub const fn counter_index(zone_id: u32, reason: Reason) -> u32 {
    zone_id * NUM_REASONS + reason as u32
}
