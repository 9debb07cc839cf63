//! Map names and sizes: the one place kernel and userspace read them from.

/// LPM trie of protected prefixes → `ZoneValue`.
pub const ZONES: &str = "JG_ZONES";
/// Hash of `FlowKey` → `GrantSet`: the hot-path lookup.
pub const GRANTS: &str = "JG_GRANTS";
/// Array of `GrantStats`, indexed by `GrantRule::stats_index`.
pub const GRANT_STATS: &str = "JG_GSTATS";
/// Per-CPU array of `Counter`, see `counters::counter_index`.
pub const COUNTERS: &str = "JG_COUNTERS";
/// Ring buffer of `DeniedEvent`.
pub const DENIED: &str = "JG_DENIED";
/// Array with one `GateConfig`.
pub const CONFIG: &str = "JG_CONFIG";
/// Per-CPU array with one `RateState`.
pub const RATE: &str = "JG_RATE";

/// LRU hash of `TrackKey` → `TrackValue`: flows host-zone addresses
/// started (host mode).
pub const FLOWS: &str = "JG_FLOWS";
/// Array with one `TrackConfig` (idle timeouts of tracked flows).
pub const TRACK_CONFIG: &str = "JG_TRACKCFG";

/// Name of the XDP program in the object.
pub const PROGRAM: &str = "jit_gate";
/// Name of the TC egress program (host-mode flow tracker) in the object.
pub const TRACKER: &str = "jit_track";

/// Default grant capacity (flow keys and stats slots); the agent can
/// override it at load time.
pub const DEFAULT_GRANT_CAPACITY: u32 = 1 << 20;
/// Zone trie capacity (prefixes, across all zones).
pub const ZONE_CAPACITY: u32 = 4096;
/// Tracked flows held at once; the least recently used go first.
pub const FLOW_CAPACITY: u32 = 1 << 16;
/// Ring buffer size in bytes (a power of two multiple of the page size).
pub const DENIED_RING_BYTES: u32 = 1 << 18;
/// Default denied events per CPU per second.
pub const DEFAULT_DENIED_EVENTS_PER_SEC: u32 = 1000;
