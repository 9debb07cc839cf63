//! Protected zones: the destination prefixes the gate guards.

/// Data part of the zone LPM trie key (the 16-byte address form); the
/// prefix length lives in the trie key header.
pub type ZoneKey = [u8; 16];

/// Zone ids are 1..=MAX_ZONES; id 0 stands for "no zone" in the counters.
pub const MAX_ZONES: u32 = 255;

/// Value of the zone LPM trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZoneValue {
    /// Zone id, 1..=MAX_ZONES.
    pub zone_id: u32,
    /// `ZONE_FLAG_*` bits; the others are reserved and must be zero.
    pub flags: u32,
}

/// The zone holds the protected machine's own addresses: replies on flows
/// the machine started itself (recorded by the egress tracker in
/// `maps::FLOWS`) pass without a grant.
pub const ZONE_FLAG_HOST: u32 = 1;
