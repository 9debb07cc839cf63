//! The gate's maps; names, sizes and value types come from jit-common.
//! The agent pins every map under its bpffs directory and may resize the
//! grant maps at load time.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use jit_common::{
    counters::COUNTER_ENTRIES, maps, Counter, FlowKey, GateConfig, GrantSet, GrantStats, RateState,
    TrackConfig, TrackKey, TrackValue, ZoneKey, ZoneValue,
};

/// Protected prefixes → zone id. Few entries, so the trie's cost stays flat.
#[map]
pub static JG_ZONES: LpmTrie<ZoneKey, ZoneValue> =
    LpmTrie::with_max_entries(maps::ZONE_CAPACITY, 0);

/// (source, zone, protocol) → rules. Not preallocated: memory follows the
/// grants actually held, while the capacity stays at a million or more.
#[map]
pub static JG_GRANTS: HashMap<FlowKey, GrantSet> =
    HashMap::with_max_entries(maps::DEFAULT_GRANT_CAPACITY, BPF_F_NO_PREALLOC);

/// Per-grant totals, shared across CPUs (updated with atomic adds).
#[map]
pub static JG_GSTATS: Array<GrantStats> = Array::with_max_entries(maps::DEFAULT_GRANT_CAPACITY, 0);

/// Verdict totals by zone and reason.
#[map]
pub static JG_COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTER_ENTRIES, 0);

/// Denied attempts for the agent's audit log.
#[map]
pub static JG_DENIED: RingBuf = RingBuf::with_byte_size(maps::DENIED_RING_BYTES, 0);

/// Settings written by the agent.
#[map]
pub static JG_CONFIG: Array<GateConfig> = Array::with_max_entries(1, 0);

/// Per-CPU window of the denied-event rate limit.
#[map]
pub static JG_RATE: PerCpuArray<RateState> = PerCpuArray::with_max_entries(1, 0);

/// Flows the protected host started (host mode), written by the egress
/// tracker and read by the gate. LRU: a full table forgets the oldest flow.
#[map]
pub static JG_FLOWS: LruHashMap<TrackKey, TrackValue> =
    LruHashMap::with_max_entries(maps::FLOW_CAPACITY, 0);

/// Idle timeouts of tracked flows, written by the agent.
#[map]
pub static JG_TRACKCFG: Array<TrackConfig> = Array::with_max_entries(1, 0);
