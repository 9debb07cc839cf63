//! The data plane: loading, pinning and adopting the XDP gate, and writing
//! zones and grants into its maps.

pub mod addr;
mod batch;
pub mod clock;
mod error;
mod flows;
pub mod pins;
pub mod rules;
pub mod tracker;

use std::{
    collections::{BTreeSet, HashMap},
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    maps::{
        lpm_trie::Key, Array, HashMap as BpfHashMap, IterableMap, LpmTrie, MapData, PerCpuArray,
        RingBuf,
    },
    programs::{links::FdLink, links::PinnedLink, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use ipnet::IpNet;
use jit_common::{
    counters::{counter_index, COUNTER_ENTRIES},
    maps, Counter, FlowKey, GateConfig, GrantSet, GrantStats, RateState, Reason, ZoneKey,
    ZoneValue, NUM_REASONS,
};
use tracing::{info, warn};

use self::flows::FlowTable;
pub use self::{
    error::GateError,
    rules::{GrantSpec, RuleSpec, ZoneTable},
    tracker::FlowIdle,
};

/// The compiled XDP program, built by build.rs.
pub static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/jit-ebpf"));

/// How to attach to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Driver mode, falling back to generic mode when the driver refuses.
    #[default]
    Auto,
    /// Driver (native) mode only.
    Driver,
    /// Generic (skb) mode only.
    Generic,
}

/// Where and how to load the gate.
#[derive(Clone, Debug)]
pub struct GateOptions {
    /// bpffs directory for map and link pins; `None` loads an unpinned gate
    /// (tests through BPF_PROG_TEST_RUN).
    pub pin_dir: Option<PathBuf>,
    /// Grant capacity: flow keys and stats slots.
    pub capacity: u32,
    /// Compile the program's aya-log diagnostics in (debug level) or out.
    pub debug_log: bool,
    pub denied_events_per_sec: u32,
}

impl Default for GateOptions {
    fn default() -> Self {
        GateOptions {
            pin_dir: None,
            capacity: maps::DEFAULT_GRANT_CAPACITY,
            debug_log: false,
            denied_events_per_sec: maps::DEFAULT_DENIED_EVENTS_PER_SEC,
        }
    }
}

/// Totals of one (zone, reason) counter cell, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterTotal {
    pub zone_id: u32,
    pub reason: Reason,
    pub packets: u64,
    pub bytes: u64,
}

/// Which interface the gate is attached to and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub iface: String,
    pub mode: &'static str,
    /// True when an existing pinned link was taken over.
    pub adopted: bool,
}

/// A loaded gate with its maps.
pub struct Gate {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
    capacity: u32,
    zones_map: LpmTrie<MapData, ZoneKey, ZoneValue>,
    grants_map: BpfHashMap<MapData, FlowKey, GrantSet>,
    stats_map: Array<MapData, GrantStats>,
    counters_map: PerCpuArray<MapData, Counter>,
    rate_map: PerCpuArray<MapData, RateState>,
    denied: Option<RingBuf<MapData>>,
    zones: ZoneTable,
    /// Mirror of the grant map, so updates are read-modify-write without a
    /// syscall per read and a failed batch can be rolled back.
    flows: FlowTable,
    used_slots: BTreeSet<u32>,
    /// Slots below `next_slot` given back, reused before new ones.
    free_slots: Vec<u32>,
    next_slot: u32,
    links: Vec<HeldLink>,
    /// A handle on every pinned map, to pin it again if its file goes.
    map_handles: Vec<(&'static str, MapData)>,
    /// Pinned maps were found and reused.
    pub adopted_maps: bool,
    /// Host mode: the egress tracker (see `tracker`).
    tracker: tracker::Tracker,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T, GateError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| GateError::Zone {
        name: name.into(),
        detail: "map missing from the eBPF object".into(),
    })?;
    T::try_from(map).map_err(|e| GateError::map(format!("opening map {name}"), e))
}

/// The agent's mirror of what the grant map holds: read in batches, or key
/// by key where the kernel has no batch lookup.
fn read_pinned_flows(
    grants_map: &BpfHashMap<MapData, FlowKey, GrantSet>,
) -> Result<FlowTable, GateError> {
    let mut flows = FlowTable::default();
    match batch::read_hash::<FlowKey, GrantSet>(grants_map.map().fd().as_fd()) {
        Ok(entries) => {
            for (key, set) in entries {
                flows.set(key, set);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            warn!("{e}; reading the pinned grants one by one (slower)");
            for entry in grants_map.iter() {
                let (key, set) = entry.map_err(|e| GateError::map("reading pinned grants", e))?;
                flows.set(key, set);
            }
        }
        Err(io_error) => {
            let source = aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_lookup_batch",
                io_error,
            });
            return Err(GateError::map("reading pinned grants", source));
        }
    }
    Ok(flows)
}

impl Gate {
    /// Loads the program, creating or adopting pinned maps.
    pub fn load(opts: &GateOptions) -> Result<Gate, GateError> {
        if PROGRAM_OBJECT.is_empty() {
            return Err(GateError::NoProgram);
        }
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(maps::GRANTS, opts.capacity)
            .map_max_entries(maps::GRANT_STATS, opts.capacity);
        let level: u8 = if opts.debug_log {
            aya_log::Level::Debug as u8
        } else {
            0
        };
        loader.override_global("AYA_LOG_LEVEL", &level, false);
        let mut adopted_maps = false;
        let pin_paths: Vec<(&'static str, PathBuf)>;
        if let Some(dir) = &opts.pin_dir {
            pins::prepare_dir(dir)?;
            adopted_maps = pins::check_pinned_maps(dir, opts.capacity)? > 0;
            pin_paths = pins::map_specs(opts.capacity)
                .iter()
                .map(|s| (s.name, pins::map_pin(dir, s.name)))
                .collect();
            for (name, path) in &pin_paths {
                loader.map_pin_path(name, path.as_path());
            }
        }
        let mut ebpf = loader.load(PROGRAM_OBJECT).map_err(GateError::Load)?;
        let logger = if opts.debug_log {
            match aya_log::EbpfLogger::init(&mut ebpf) {
                Ok(logger) => Some(logger),
                Err(e) => {
                    warn!("eBPF diagnostics unavailable: {e}");
                    None
                }
            }
        } else {
            None
        };
        let program: &mut Xdp = ebpf
            .program_mut(maps::PROGRAM)
            .ok_or_else(|| GateError::Zone {
                name: maps::PROGRAM.into(),
                detail: "program missing from the eBPF object".into(),
            })?
            .try_into()
            .map_err(GateError::Program)?;
        program.load().map_err(GateError::Program)?;
        let tracker = tracker::Tracker::load(&mut ebpf)?;

        let zones_map = take(&mut ebpf, maps::ZONES)?;
        let grants_map: BpfHashMap<MapData, FlowKey, GrantSet> = take(&mut ebpf, maps::GRANTS)?;
        let stats_map = take(&mut ebpf, maps::GRANT_STATS)?;
        let counters_map = take(&mut ebpf, maps::COUNTERS)?;
        let rate_map = take(&mut ebpf, maps::RATE)?;
        let denied = Some(take(&mut ebpf, maps::DENIED)?);
        let mut config: Array<MapData, GateConfig> = take(&mut ebpf, maps::CONFIG)?;
        config
            .set(
                0,
                GateConfig {
                    denied_events_per_sec: opts.denied_events_per_sec,
                    flags: 0,
                },
                0,
            )
            .map_err(|e| GateError::map("writing the gate config", e))?;

        let mut map_handles = Vec::new();
        if let Some(dir) = &opts.pin_dir {
            for spec in pins::map_specs(opts.capacity) {
                let path = pins::map_pin(dir, spec.name);
                let data = MapData::from_pin(&path).map_err(|e| {
                    GateError::map(format!("reopening pinned map {}", path.display()), e)
                })?;
                map_handles.push((spec.name, data));
            }
        }
        let flows = read_pinned_flows(&grants_map)?;
        let used_slots: BTreeSet<u32> = flows.slots().collect();
        let next_slot = used_slots.last().map_or(0, |s| s + 1);
        let free_slots = unused_below(&used_slots, next_slot);
        Ok(Gate {
            ebpf,
            pin_dir: opts.pin_dir.clone(),
            capacity: opts.capacity,
            zones_map,
            grants_map,
            stats_map,
            counters_map,
            rate_map,
            denied,
            zones: ZoneTable::default(),
            flows,
            used_slots,
            free_slots,
            next_slot,
            links: Vec::new(),
            map_handles,
            adopted_maps,
            tracker,
            logger,
        })
    }

    fn program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(maps::PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("program checked at load")
    }

    /// The loaded program, for BPF_PROG_TEST_RUN.
    pub fn xdp(&mut self) -> &mut Xdp {
        self.program()
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// Attaches to an interface of the current network namespace. An
    /// existing pinned link is taken over by swapping its program in one
    /// `bpf_link_update`, so the interface is never without a gate.
    fn attach_gate(&mut self, iface: &str, mode: AttachMode) -> Result<Attachment, GateError> {
        let link_path = self.pin_dir.as_ref().map(|d| pins::link_pin(d, iface));
        if let Some(path) = link_path.as_ref().filter(|p| p.exists()) {
            let pinned = PinnedLink::from_pin(path).map_err(|e| GateError::Link {
                what: "opening the pinned link",
                iface: iface.into(),
                detail: e.to_string(),
            })?;
            let fd_link: FdLink = pinned.into();
            let xdp_link =
                aya::programs::xdp::XdpLink::try_from(fd_link).map_err(|e| GateError::Link {
                    what: "adopting the pinned link",
                    iface: iface.into(),
                    detail: e.to_string(),
                })?;
            let program = self.program();
            let id = program
                .attach_to_link(xdp_link)
                .map_err(|e| GateError::Link {
                    what: "replacing the program of the pinned link",
                    iface: iface.into(),
                    detail: format!("{e:#}"),
                })?;
            // Keep our own reference: the pin keeps the link alive, the fd lets
            // us unpin it on detach.
            let link = program.take_link(id).map_err(GateError::Program)?;
            drop(link);
            let pinned = PinnedLink::from_pin(path).map_err(|e| GateError::Link {
                what: "reopening the pinned link",
                iface: iface.into(),
                detail: e.to_string(),
            })?;
            self.links.push(HeldLink::new(iface, pinned, mode, path));
            info!(
                iface,
                "adopted the pinned XDP link and swapped in this build's program"
            );
            return Ok(Attachment {
                iface: iface.into(),
                mode: "adopted",
                adopted: true,
            });
        }
        let (id, mode_name) = {
            let program = self.program();
            match mode {
                AttachMode::Driver => (program.attach(iface, XdpMode::Driver), "driver"),
                AttachMode::Generic => (program.attach(iface, XdpMode::Skb), "generic"),
                AttachMode::Auto => match program.attach(iface, XdpMode::Driver) {
                    Ok(id) => (Ok(id), "driver"),
                    Err(e) => {
                        warn!(iface, error = %e, "driver-mode XDP refused, falling back to generic mode");
                        (program.attach(iface, XdpMode::Skb), "generic")
                    }
                },
            }
        };
        let id = id.map_err(|e| GateError::Attach {
            iface: iface.into(),
            detail: e.to_string(),
        })?;
        let program = self.program();
        let link = program.take_link(id).map_err(GateError::Program)?;
        let fd_link = FdLink::try_from(link).map_err(|e| GateError::Link {
            what: "turning the attachment into a bpf link",
            iface: iface.into(),
            detail: e.to_string(),
        })?;
        match link_path {
            Some(path) => {
                let pinned = fd_link.pin(&path).map_err(|e| GateError::Link {
                    what: "pinning the link",
                    iface: iface.into(),
                    detail: e.to_string(),
                })?;
                self.links.push(HeldLink::new(iface, pinned, mode, &path));
            }
            None => {
                // Unpinned gates (tests) keep the link open for their lifetime.
                std::mem::forget(fd_link);
            }
        }
        info!(iface, mode = mode_name, "attached the XDP gate");
        Ok(Attachment {
            iface: iface.into(),
            mode: mode_name,
            adopted: false,
        })
    }

    /// Interfaces this gate holds links for.
    pub fn attached(&self) -> Vec<String> {
        self.links.iter().map(|l| l.iface.clone()).collect()
    }

    /// Replaces the protected zones. New prefixes go in before stale ones
    /// leave, so a reload never opens a prefix that stays protected.
    pub fn set_zones(&mut self, zones: &[(IpNet, u32)]) -> Result<(), GateError> {
        let table = ZoneTable::new(zones.to_vec());
        for (net, id) in table.entries() {
            if *id == 0 || *id > jit_common::MAX_ZONES {
                return Err(GateError::Zone {
                    name: net.to_string(),
                    detail: format!("zone id {id} is outside 1..={}", jit_common::MAX_ZONES),
                });
            }
        }
        let existing: Vec<Key<ZoneKey>> = self
            .zones_map
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|e| GateError::map("reading zones", e))?;
        let mut wanted = Vec::new();
        for (net, id) in table.entries() {
            let (data, len) = addr::net16(*net);
            let key = Key::new(len as u32, data);
            self.zones_map
                .insert(
                    &key,
                    ZoneValue {
                        zone_id: *id,
                        flags: self.tracker.zone_flags(*id),
                    },
                    0,
                )
                .map_err(|e| GateError::map(format!("adding zone prefix {net}"), e))?;
            wanted.push((len as u32, data));
        }
        for key in existing {
            if !wanted.contains(&(key.prefix_len(), key.data())) {
                self.zones_map
                    .remove(&key)
                    .map_err(|e| GateError::map("removing a stale zone prefix", e))?;
            }
        }
        self.zones = table;
        Ok(())
    }

    pub fn zones(&self) -> &ZoneTable {
        &self.zones
    }

    /// Reserves a stats slot for a new grant.
    pub fn allocate_slot(&mut self) -> Result<u32, GateError> {
        while let Some(slot) = self.free_slots.pop() {
            if self.used_slots.insert(slot) {
                return Ok(slot);
            }
        }
        if self.next_slot >= self.capacity {
            return Err(GateError::CapacityFull {
                capacity: self.capacity,
            });
        }
        let slot = self.next_slot;
        self.next_slot += 1;
        self.used_slots.insert(slot);
        Ok(slot)
    }

    /// Releases a slot reserved by `allocate_slot` that was never installed.
    pub fn free_slot(&mut self, slot: u32) {
        if self.used_slots.remove(&slot) {
            self.free_slots.push(slot);
        }
    }

    /// Writes changed flow sets to the kernel; on failure restores the sets
    /// already written, so a grant is in the kernel whole or not at all.
    fn apply(&mut self, changes: HashMap<FlowKey, GrantSet>) -> Result<(), GateError> {
        let mut done: Vec<(FlowKey, Option<GrantSet>)> = Vec::new();
        for (key, set) in &changes {
            let result = if set.count == 0 {
                match self.grants_map.remove(key) {
                    Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                    other => other,
                }
            } else {
                self.grants_map.insert(key, set, 0)
            };
            if let Err(e) = result {
                for (key, old) in done.into_iter().rev() {
                    let _ = match old {
                        Some(old) if old.count > 0 => self.grants_map.insert(key, old, 0),
                        _ => self.grants_map.remove(&key),
                    };
                }
                return Err(GateError::map("writing a grant to the kernel", e));
            }
            done.push((*key, self.flows.get(key).copied()));
        }
        for (key, set) in changes {
            self.flows.set(key, set);
        }
        Ok(())
    }

    /// Puts a grant into the kernel. Its stats slot is zeroed first.
    pub fn install(&mut self, spec: &GrantSpec) -> Result<(), GateError> {
        let rules = rules::kernel_rules(spec, &self.zones)?;
        let mut changes: HashMap<FlowKey, GrantSet> = HashMap::new();
        // A re-install may move the slot off keys it held before.
        for key in self.flows.keys_of(spec.slot) {
            let mut set = self.flows.get(key).copied().unwrap_or_default();
            rules::remove_slot(&mut set, spec.slot);
            changes.insert(*key, set);
        }
        for (key, rule) in rules {
            // A re-install replaces the slot's old rules: drop them once, when
            // the key's set is first copied, not for every rule of the grant.
            let set = changes.entry(key).or_insert_with(|| {
                let mut set = self.flows.get(&key).copied().unwrap_or_default();
                rules::remove_slot(&mut set, spec.slot);
                set
            });
            rules::push_rule(set, &key, rule)?;
        }
        self.stats_map
            .set(spec.slot, GrantStats::default(), 0)
            .map_err(|e| GateError::map("clearing a grant's stats", e))?;
        self.used_slots.insert(spec.slot);
        self.apply(changes)
    }

    /// Changes the kernel expiry of an installed grant's rules.
    pub fn set_expiry(&mut self, slot: u32, expires_at_boot_ns: u64) -> Result<(), GateError> {
        let mut changes = HashMap::new();
        for key in self.flows.keys_of(slot) {
            let Some(mut set) = self.flows.get(key).copied() else {
                continue;
            };
            for rule in &mut set.rules[..set.count as usize] {
                if rule.stats_index == slot {
                    rule.expires_at_ns = expires_at_boot_ns;
                }
            }
            changes.insert(*key, set);
        }
        if changes.is_empty() {
            return Err(GateError::UnknownGrant { id: slot as u64 });
        }
        self.apply(changes)
    }

    /// Removes a grant's rules and returns its final stats.
    pub fn remove(&mut self, slot: u32) -> Result<GrantStats, GateError> {
        let mut changes = HashMap::new();
        for key in self.flows.keys_of(slot) {
            if let Some(mut set) = self.flows.get(key).copied() {
                rules::remove_slot(&mut set, slot);
                changes.insert(*key, set);
            }
        }
        let stats = self.stats(slot)?;
        self.apply(changes)?;
        self.free_slot(slot);
        Ok(stats)
    }

    /// Makes the kernel hold exactly `grants`: adds what is missing, rewrites
    /// what differs, deletes what is unknown. Used when adopting pinned state.
    pub fn reconcile(&mut self, grants: &[GrantSpec]) -> Result<ReconcileReport, GateError> {
        let desired = rules::desired_sets(grants, &self.zones)?;
        let mut changes = HashMap::new();
        let mut report = ReconcileReport::default();
        for (key, set) in self.flows.iter() {
            if !desired.contains_key(key) {
                changes.insert(*key, GrantSet::default());
                report.removed += set.count as usize;
            }
        }
        for (key, set) in &desired {
            match self.flows.get(key) {
                Some(have) if have == set => report.kept += set.count as usize,
                Some(_) => {
                    changes.insert(*key, *set);
                    report.rewritten += set.count as usize;
                }
                None => {
                    changes.insert(*key, *set);
                    report.added += set.count as usize;
                }
            }
        }
        self.apply(changes)?;
        self.used_slots = grants.iter().map(|g| g.slot).collect();
        self.next_slot = self.used_slots.last().map_or(0, |s| s + 1);
        self.free_slots = unused_below(&self.used_slots, self.next_slot);
        Ok(report)
    }

    /// Number of flow keys in the grant map.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Number of stats slots in use (grants installed).
    pub fn grant_count(&self) -> usize {
        self.used_slots.len()
    }

    pub fn stats(&self, slot: u32) -> Result<GrantStats, GateError> {
        self.stats_map
            .get(&slot, 0)
            .map_err(|e| GateError::map(format!("reading stats slot {slot}"), e))
    }

    /// Verdict totals for zone 0 and the given zone ids, summed over CPUs.
    pub fn counters(&self, zone_ids: &[u32]) -> Result<Vec<CounterTotal>, GateError> {
        let mut out = Vec::new();
        let mut ids = vec![0];
        ids.extend(zone_ids.iter().copied().filter(|z| *z != 0));
        for zone_id in ids {
            for reason in Reason::ALL {
                let index = counter_index(zone_id, reason);
                if index >= COUNTER_ENTRIES {
                    continue;
                }
                let values = self
                    .counters_map
                    .get(&index, 0)
                    .map_err(|e| GateError::map("reading counters", e))?;
                let (packets, bytes) = values
                    .iter()
                    .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
                out.push(CounterTotal {
                    zone_id,
                    reason,
                    packets,
                    bytes,
                });
            }
        }
        debug_assert_eq!(Reason::ALL.len() as u32, NUM_REASONS);
        Ok(out)
    }

    /// Denied events suppressed by the in-kernel rate limit, over all CPUs.
    pub fn suppressed_events(&self) -> Result<u64, GateError> {
        let values = self
            .rate_map
            .get(&0, 0)
            .map_err(|e| GateError::map("reading the event rate state", e))?;
        Ok(values.iter().map(|r| r.suppressed as u64).sum())
    }

    /// Takes the program's aya-log reader (present only when loaded with
    /// `debug_log`), for a task that flushes it into `log`/`tracing`.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    /// Takes the denied-attempt ring buffer (once) for an event reader.
    pub fn take_denied_events(&mut self) -> Option<RingBuf<MapData>> {
        self.denied.take()
    }

    /// Removes links and pins: the gate stops filtering and its grants are
    /// gone. The maps live on only while this process holds them.
    pub fn detach_all(mut self) -> Result<(), GateError> {
        for held in self.links.drain(..) {
            drop(held.spare);
            let Some(link) = held.link else { continue };
            link.unpin().map_err(|source| GateError::Io {
                what: "unpinning the link of",
                path: PathBuf::from(held.iface),
                source,
            })?;
        }
        if let Some(dir) = &self.pin_dir {
            remove_pins(dir)?;
        }
        Ok(())
    }
}

/// A link the gate holds, with the interface index it was made for.
struct HeldLink {
    iface: String,
    ifindex: u32,
    mode: AttachMode,
    /// `None` while the interface is gone.
    link: Option<PinnedLink>,
    /// A second reference to the same link (opened from its pin). aya's
    /// `FdLink::pin` consumes the link, so re-pinning uses `link` while
    /// `spare` keeps the gate attached if pinning fails.
    spare: Option<PinnedLink>,
    pin_lost_reported: bool,
}

impl HeldLink {
    fn new(iface: &str, link: PinnedLink, mode: AttachMode, pin: &Path) -> Self {
        let spare = PinnedLink::from_pin(pin).ok();
        HeldLink {
            iface: iface.into(),
            ifindex: ifindex(iface),
            mode,
            link: Some(link),
            spare,
            pin_lost_reported: false,
        }
    }
}

/// Slots below `next` not in `used`, highest first so that `pop` reuses
/// the lowest.
fn unused_below(used: &BTreeSet<u32>, next: u32) -> Vec<u32> {
    (0..next).rev().filter(|s| !used.contains(s)).collect()
}

fn ifindex(iface: &str) -> u32 {
    nix::net::if_::if_nametoindex(iface).unwrap_or(0)
}

/// Something the watchdog found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// A gated interface disappeared; its link is defunct.
    InterfaceGone { iface: String },
    /// A gated interface came back (or was re-created) and was re-attached.
    Reattached { iface: String, mode: &'static str },
    /// Re-attaching failed; it is retried on the next check.
    ReattachFailed { iface: String, error: String },
    /// A pin file was removed under the running agent and was restored.
    PinRestored { path: PathBuf },
    /// A pin could not be restored.
    PinLost { path: PathBuf, error: String },
}

impl Gate {
    /// Re-attaches to interfaces that were removed and re-created: the
    /// kernel detaches an XDP link when its device goes, and a new device
    /// with the same name has a new index and no program.
    pub fn check_interfaces(&mut self) -> Vec<WatchEvent> {
        let mut events = Vec::new();
        let mut redo = Vec::new();
        for (i, held) in self.links.iter_mut().enumerate() {
            let now = ifindex(&held.iface);
            if now == held.ifindex && held.link.is_some() {
                continue;
            }
            if now == 0 {
                if held.link.is_some() {
                    held.link = None;
                    held.spare = None;
                    held.ifindex = 0;
                    events.push(WatchEvent::InterfaceGone {
                        iface: held.iface.clone(),
                    });
                }
                continue;
            }
            redo.push(i);
        }
        for i in redo.into_iter().rev() {
            let mut held = self.links.remove(i);
            drop(held.link.take());
            drop(held.spare.take());
            if let Some(dir) = &self.pin_dir {
                // The old pin names a link to a device that no longer exists.
                let _ = std::fs::remove_file(pins::link_pin(dir, &held.iface));
            }
            match self.attach(&held.iface, held.mode) {
                Ok(a) => events.push(WatchEvent::Reattached {
                    iface: held.iface,
                    mode: a.mode,
                }),
                Err(e) => {
                    events.push(WatchEvent::ReattachFailed {
                        iface: held.iface.clone(),
                        error: e.to_string(),
                    });
                    self.links.push(HeldLink {
                        ifindex: 0,
                        link: None,
                        spare: None,
                        ..held
                    });
                }
            }
        }
        events
    }

    /// Pins every map and link again whose pin file was removed, so that the
    /// gate still outlives the agent.
    pub fn check_pins(&mut self) -> Vec<WatchEvent> {
        let Some(dir) = self.pin_dir.clone() else {
            return Vec::new();
        };
        let mut events = Vec::new();
        if !pins::links_dir(&dir).exists() {
            let _ = std::fs::create_dir_all(pins::links_dir(&dir));
        }
        for (name, data) in &self.map_handles {
            let path = pins::map_pin(&dir, name);
            if path.exists() {
                continue;
            }
            events.push(match data.pin(&path) {
                Ok(()) => WatchEvent::PinRestored { path },
                Err(e) => WatchEvent::PinLost {
                    path,
                    error: e.to_string(),
                },
            });
        }
        events.extend(self.check_tracker_pins(&dir));
        for held in &mut self.links {
            let path = pins::link_pin(&dir, &held.iface);
            if path.exists() {
                continue;
            }
            if held.link.is_none() || held.spare.is_none() {
                // One reference left: pinning would consume it, and a failed
                // pin would detach the gate. Keep it attached and say so.
                if (held.link.is_some() || held.spare.is_some()) && !held.pin_lost_reported {
                    held.pin_lost_reported = true;
                    events.push(WatchEvent::PinLost {
                        path,
                        error: "an earlier re-pin failed; the gate stays attached only while this agent runs".into(),
                    });
                }
                continue;
            }
            let link = held.link.take().expect("checked above");
            let fd_link: FdLink = link.into();
            match fd_link.pin(&path) {
                Ok(pinned) => {
                    held.link = Some(pinned);
                    held.pin_lost_reported = false;
                    events.push(WatchEvent::PinRestored { path });
                }
                Err(e) => {
                    held.pin_lost_reported = true;
                    events.push(WatchEvent::PinLost {
                        path,
                        error: e.to_string(),
                    })
                }
            }
        }
        events
    }
}

/// What `Gate::reconcile` changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub kept: usize,
    pub added: usize,
    pub rewritten: usize,
    pub removed: usize,
}

/// Removes every pin of a gate directory: links first (which detaches the
/// program), then maps.
pub fn remove_pins(dir: &Path) -> Result<(), GateError> {
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| GateError::Io { what, path, source }
    };
    let links = pins::links_dir(dir);
    if links.exists() {
        for entry in std::fs::read_dir(&links).map_err(io("listing", &links))? {
            let path = entry.map_err(io("listing", &links))?.path();
            std::fs::remove_file(&path).map_err(io("removing the link pin", &path))?;
        }
        std::fs::remove_dir(&links).map_err(io("removing", &links))?;
    }
    for spec in pins::map_specs(0) {
        let path = pins::map_pin(dir, spec.name);
        if path.exists() {
            std::fs::remove_file(&path).map_err(io("removing the map pin", &path))?;
        }
    }
    if dir.exists() {
        std::fs::remove_dir(dir).map_err(io("removing the pin directory", dir))?;
    }
    Ok(())
}
