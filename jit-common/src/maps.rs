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

/// Name of the XDP program in the object.
pub const PROGRAM: &str = "jit_gate";

/// Default grant capacity (flow keys and stats slots); the agent can
/// override it at load time.
pub const DEFAULT_GRANT_CAPACITY: u32 = 1 << 20;
/// Zone trie capacity (prefixes, across all zones).
pub const ZONE_CAPACITY: u32 = 4096;
/// Ring buffer size in bytes (a power of two multiple of the page size).
pub const DENIED_RING_BYTES: u32 = 1 << 18;
/// Default denied events per CPU per second.
pub const DEFAULT_DENIED_EVENTS_PER_SEC: u32 = 1000;
