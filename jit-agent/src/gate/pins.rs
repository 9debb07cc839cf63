//! The bpffs layout of a gate and the checks made before adopting it.
//!
//! aya reuses a pinned map by name without comparing it with the map the
//! object declares, so a map left by an older build (other value size, other
//! capacity) would be silently misread. Every pinned map is checked here
//! first, and a mismatch refuses to start.

use std::path::{Path, PathBuf};

use aya::maps::{MapInfo, MapType};
use jit_common::{
    maps, Counter, FlowKey, GateConfig, GrantSet, GrantStats, RateState, TrackConfig, TrackKey,
    TrackValue, ZoneValue,
};

use super::GateError;

const BPF_F_NO_PREALLOC: u32 = 1;
const BPFFS_MAGIC: i64 = 0xcafe4a11;

/// What a map must look like to be adopted.
pub struct MapSpec {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

/// The maps this build pins, with the shape it expects for a capacity.
pub fn map_specs(capacity: u32) -> [MapSpec; 9] {
    let size = |n: usize| n as u32;
    [
        MapSpec {
            name: maps::ZONES,
            map_type: MapType::LpmTrie,
            key_size: 4 + 16,
            value_size: size(size_of::<ZoneValue>()),
            max_entries: maps::ZONE_CAPACITY,
            flags: BPF_F_NO_PREALLOC,
        },
        MapSpec {
            name: maps::GRANTS,
            map_type: MapType::Hash,
            key_size: size(size_of::<FlowKey>()),
            value_size: size(size_of::<GrantSet>()),
            max_entries: capacity,
            flags: BPF_F_NO_PREALLOC,
        },
        MapSpec {
            name: maps::GRANT_STATS,
            map_type: MapType::Array,
            key_size: 4,
            value_size: size(size_of::<GrantStats>()),
            max_entries: capacity,
            flags: 0,
        },
        MapSpec {
            name: maps::COUNTERS,
            map_type: MapType::PerCpuArray,
            key_size: 4,
            value_size: size(size_of::<Counter>()),
            max_entries: jit_common::counters::COUNTER_ENTRIES,
            flags: 0,
        },
        MapSpec {
            name: maps::DENIED,
            map_type: MapType::RingBuf,
            key_size: 0,
            value_size: 0,
            max_entries: maps::DENIED_RING_BYTES,
            flags: 0,
        },
        MapSpec {
            name: maps::CONFIG,
            map_type: MapType::Array,
            key_size: 4,
            value_size: size(size_of::<GateConfig>()),
            max_entries: 1,
            flags: 0,
        },
        MapSpec {
            name: maps::RATE,
            map_type: MapType::PerCpuArray,
            key_size: 4,
            value_size: size(size_of::<RateState>()),
            max_entries: 1,
            flags: 0,
        },
        MapSpec {
            name: maps::FLOWS,
            map_type: MapType::LruHash,
            key_size: size(size_of::<TrackKey>()),
            value_size: size(size_of::<TrackValue>()),
            max_entries: maps::FLOW_CAPACITY,
            flags: 0,
        },
        MapSpec {
            name: maps::TRACK_CONFIG,
            map_type: MapType::Array,
            key_size: 4,
            value_size: size(size_of::<TrackConfig>()),
            max_entries: 1,
            flags: 0,
        },
    ]
}

pub fn map_pin(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

pub fn links_dir(dir: &Path) -> PathBuf {
    dir.join("links")
}

pub fn link_pin(dir: &Path, iface: &str) -> PathBuf {
    links_dir(dir).join(iface)
}

/// Pin of the host-mode egress tracker's TCX link on `iface`. Interface
/// names cannot hold a `:` (the kernel's `dev_valid_name`), so this never
/// collides with an XDP link pin.
pub fn tracker_link_pin(dir: &Path, iface: &str) -> PathBuf {
    links_dir(dir).join(format!("{iface}:egress"))
}

/// Creates the pin directory and checks it is on bpffs: pins elsewhere would
/// fail late and obscurely.
pub fn prepare_dir(dir: &Path) -> Result<(), GateError> {
    std::fs::create_dir_all(links_dir(dir)).map_err(|source| GateError::Io {
        what: "creating the pin directory",
        path: dir.to_owned(),
        source,
    })?;
    let stat = nix::sys::statfs::statfs(dir).map_err(|e| GateError::Io {
        what: "checking the filesystem of",
        path: dir.to_owned(),
        source: e.into(),
    })?;
    if stat.filesystem_type().0 as i64 != BPFFS_MAGIC {
        return Err(GateError::NotBpffs {
            path: dir.to_owned(),
        });
    }
    Ok(())
}

/// Checks every map already pinned under `dir` against this build.
/// Returns how many maps were found (0 means a fresh gate).
pub fn check_pinned_maps(dir: &Path, capacity: u32) -> Result<usize, GateError> {
    let mut found = 0;
    for spec in map_specs(capacity) {
        let path = map_pin(dir, spec.name);
        if !path.exists() {
            continue;
        }
        found += 1;
        let info = MapInfo::from_pin(&path)
            .map_err(|e| GateError::map(format!("reading pinned map {}", path.display()), e))?;
        let mismatch = |field: &'static str, found: String, expected: String| {
            Err(GateError::PinnedMapMismatch {
                path: path.clone(),
                pin_dir: dir.to_owned(),
                field,
                found,
                expected,
            })
        };
        let map_type = info
            .map_type()
            .map_err(|e| GateError::map(format!("reading the type of {}", path.display()), e))?;
        if map_type != spec.map_type {
            return mismatch(
                "the map type",
                format!("{map_type:?}"),
                format!("{:?}", spec.map_type),
            );
        }
        if info.key_size() != spec.key_size {
            return mismatch(
                "the key size",
                info.key_size().to_string(),
                spec.key_size.to_string(),
            );
        }
        if info.value_size() != spec.value_size {
            return mismatch(
                "the value size",
                info.value_size().to_string(),
                spec.value_size.to_string(),
            );
        }
        if info.max_entries() != spec.max_entries {
            return mismatch(
                "the capacity (max_entries)",
                info.max_entries().to_string(),
                spec.max_entries.to_string(),
            );
        }
        if info.map_flags() != spec.flags {
            return mismatch(
                "the flags",
                format!("{:#x}", info.map_flags()),
                format!("{:#x}", spec.flags),
            );
        }
    }
    Ok(found)
}
