//! Host mode on the agent side: the TC egress tracker's program, links and
//! maps, the host flag of zones and the idle timeouts of tracked flows.
//!
//! The tracker is attached with every gate attachment, whether or not the
//! policy has a host zone: it records nothing for addresses outside host
//! zones, and a reload that adds one then works at once, with no attach
//! step that could fail half-way.
//!
//! The tracker uses a TCX link (kernel 6.6 and later), pinned next to the
//! XDP link, so it outlives the agent like the gate does and a restart
//! swaps this build's program into the pinned link.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData},
    programs::{
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        LinkOrder, SchedClassifier, TcAttachType,
    },
    Ebpf,
};
use ipnet::IpNet;
use jit_common::{maps, track, TrackConfig, TrackKey, TrackValue, ZONE_FLAG_HOST};
use tracing::{info, warn};

use super::{pins, Gate, GateError, WatchEvent};

/// Idle timeouts of tracked flows: a flow whose last packet from the host
/// is older than this lets nothing in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowIdle {
    pub tcp: Duration,
    pub udp: Duration,
    pub icmp: Duration,
}

impl Default for FlowIdle {
    fn default() -> Self {
        FlowIdle {
            tcp: Duration::from_secs(track::DEFAULT_TCP_IDLE_SECS),
            udp: Duration::from_secs(track::DEFAULT_UDP_IDLE_SECS),
            icmp: Duration::from_secs(track::DEFAULT_ICMP_IDLE_SECS),
        }
    }
}

impl FlowIdle {
    fn kernel(&self) -> TrackConfig {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        TrackConfig {
            tcp_idle_ns: ns(self.tcp),
            udp_idle_ns: ns(self.udp),
            icmp_idle_ns: ns(self.icmp),
        }
    }
}

/// One tracker link the gate holds.
enum HeldTracker {
    /// Pinned under the pin directory; `spare` is a second reference opened
    /// from the pin, so re-pinning (which consumes `link`) cannot detach it.
    Pinned {
        link: Option<PinnedLink>,
        spare: Option<PinnedLink>,
    },
    /// Unpinned gates (tests) hold the link for their lifetime.
    Unpinned(#[expect(dead_code, reason = "held only to keep the link attached")] FdLink),
}

struct TrackerLink {
    ifindex: u32,
    held: HeldTracker,
}

/// The tracker's state inside a [`Gate`].
pub(super) struct Tracker {
    flows: BpfHashMap<MapData, TrackKey, TrackValue>,
    config: Array<MapData, TrackConfig>,
    host_zones: BTreeSet<u32>,
    links: HashMap<String, TrackerLink>,
}

impl Tracker {
    /// Loads the classifier (the maps it shares with the gate are already
    /// created or adopted) and writes the default idle timeouts.
    pub(super) fn load(ebpf: &mut Ebpf) -> Result<Tracker, GateError> {
        let program: &mut SchedClassifier = ebpf
            .program_mut(maps::TRACKER)
            .ok_or_else(|| GateError::Zone {
                name: maps::TRACKER.into(),
                detail: "program missing from the eBPF object".into(),
            })?
            .try_into()
            .map_err(GateError::Program)?;
        program.load().map_err(GateError::Program)?;
        let flows = super::take(ebpf, maps::FLOWS)?;
        let mut config: Array<MapData, TrackConfig> = super::take(ebpf, maps::TRACK_CONFIG)?;
        config
            .set(0, FlowIdle::default().kernel(), 0)
            .map_err(|e| GateError::map("writing the flow idle timeouts", e))?;
        Ok(Tracker {
            flows,
            config,
            host_zones: BTreeSet::new(),
            links: HashMap::new(),
        })
    }

    /// The `ZoneValue::flags` of a zone id.
    pub(super) fn zone_flags(&self, zone_id: u32) -> u32 {
        if self.host_zones.contains(&zone_id) {
            ZONE_FLAG_HOST
        } else {
            0
        }
    }
}

fn link_error(what: &'static str, iface: &str, e: impl std::fmt::Display) -> GateError {
    GateError::Link {
        what,
        iface: iface.into(),
        detail: format!("{e:#}"),
    }
}

impl Gate {
    /// Replaces the protected zones, marking `host_zone_ids` as the
    /// machine's own addresses (host mode). On failure the previous host
    /// set stays, as `set_zones` keeps the previous zones.
    pub fn set_zones_with_hosts(
        &mut self,
        zones: &[(IpNet, u32)],
        host_zone_ids: &[u32],
    ) -> Result<(), GateError> {
        let previous = std::mem::replace(
            &mut self.tracker.host_zones,
            host_zone_ids.iter().copied().collect(),
        );
        let result = self.set_zones(zones);
        if result.is_err() {
            self.tracker.host_zones = previous;
        }
        result
    }

    /// Writes the idle timeouts of tracked flows; they apply at once, also
    /// to flows already tracked.
    pub fn set_flow_idle(&mut self, idle: FlowIdle) -> Result<(), GateError> {
        self.tracker
            .config
            .set(0, idle.kernel(), 0)
            .map_err(|e| GateError::map("writing the flow idle timeouts", e))
    }

    /// The loaded egress tracker, for BPF_PROG_TEST_RUN.
    pub fn tracker(&mut self) -> &mut SchedClassifier {
        tracker_program(&mut self.ebpf)
    }

    /// Every tracked flow in the kernel table.
    pub fn tracked_flows(&self) -> Result<Vec<(TrackKey, TrackValue)>, GateError> {
        self.tracker
            .flows
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|e| GateError::map("reading tracked flows", e))
    }

    /// Puts a flow into the kernel table (tests and fixtures).
    pub fn insert_tracked_flow(
        &mut self,
        key: TrackKey,
        value: TrackValue,
    ) -> Result<(), GateError> {
        self.tracker
            .flows
            .insert(key, value, 0)
            .map_err(|e| GateError::map("writing a tracked flow", e))
    }

    /// Empties the kernel flow table.
    pub fn clear_tracked_flows(&mut self) -> Result<(), GateError> {
        let keys: Vec<TrackKey> = self
            .tracker
            .flows
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|e| GateError::map("reading tracked flows", e))?;
        for key in keys {
            match self.tracker.flows.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(GateError::map("removing a tracked flow", e)),
            }
        }
        Ok(())
    }

    /// Attaches the XDP gate and the egress tracker to `iface`. The tracker
    /// goes first, so flows started once the gate filters are recorded.
    pub fn attach(
        &mut self,
        iface: &str,
        mode: super::AttachMode,
    ) -> Result<super::Attachment, GateError> {
        self.attach_tracker(iface)?;
        self.attach_gate(iface, mode)
    }

    /// Attaches the tracker to `iface`'s egress, or takes over its pinned
    /// TCX link. A link already held for the same device is kept.
    fn attach_tracker(&mut self, iface: &str) -> Result<(), GateError> {
        let ifindex = nix::net::if_::if_nametoindex(iface).unwrap_or(0);
        if ifindex == 0 {
            return Err(GateError::Attach {
                iface: iface.into(),
                detail: "no such interface".into(),
            });
        }
        if self
            .tracker
            .links
            .get(iface)
            .is_some_and(|l| l.ifindex == ifindex)
        {
            return Ok(());
        }
        // A link held for an earlier device of this name is defunct.
        self.tracker.links.remove(iface);
        let pin = self
            .pin_dir
            .as_deref()
            .map(|d| pins::tracker_link_pin(d, iface));
        if let Some(path) = pin.as_deref().filter(|p| p.exists()) {
            match self.adopt_tracker(iface, path) {
                Ok(true) => {
                    info!(
                        iface,
                        "adopted the pinned tracker link and swapped in this build's program"
                    );
                    return self.hold_pinned(iface, ifindex, path);
                }
                Ok(false) => {
                    warn!(
                        iface,
                        "the pinned tracker link is not attached to this interface (it was re-created); attaching a new one"
                    );
                }
                Err(e) => {
                    warn!(iface, error = %e, "the pinned tracker link cannot be taken over; attaching a new one")
                }
            }
            std::fs::remove_file(path).map_err(|source| GateError::Io {
                what: "removing the stale tracker link pin",
                path: path.to_owned(),
                source,
            })?;
        }
        let program = tracker_program(&mut self.ebpf);
        let id = program
            .attach_with_options(
                iface,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|e| GateError::Attach {
                iface: iface.into(),
                detail: format!("the egress tracker (TCX): {e}"),
            })?;
        let link = program.take_link(id).map_err(GateError::Program)?;
        let fd_link = FdLink::try_from(link)
            .map_err(|e| link_error("turning the tracker attachment into a bpf link", iface, e))?;
        match pin {
            Some(path) => {
                fd_link
                    .pin(&path)
                    .map_err(|e| link_error("pinning the tracker link", iface, e))?;
                self.hold_pinned(iface, ifindex, &path)?;
            }
            None => {
                self.tracker.links.insert(
                    iface.into(),
                    TrackerLink {
                        ifindex,
                        held: HeldTracker::Unpinned(fd_link),
                    },
                );
            }
        }
        info!(iface, "attached the host-mode egress tracker (TCX)");
        Ok(())
    }

    /// Swaps this build's program into the pinned link at `path`. Returns
    /// whether the link then runs on `iface`: a link whose device was
    /// removed stays pinned but attached to nothing.
    fn adopt_tracker(&mut self, iface: &str, path: &Path) -> Result<bool, GateError> {
        let pinned = PinnedLink::from_pin(path)
            .map_err(|e| link_error("opening the pinned tracker link", iface, e))?;
        let fd_link: FdLink = pinned.into();
        let tc_link = SchedClassifierLink::try_from(fd_link)
            .map_err(|e| link_error("adopting the pinned tracker link", iface, e))?;
        let program = tracker_program(&mut self.ebpf);
        let id = program
            .attach_to_link(tc_link)
            .map_err(|e| link_error("replacing the program of the tracker link", iface, e))?;
        // The pin keeps the link; this process holds it through the pin.
        drop(program.take_link(id).map_err(GateError::Program)?);
        let ours = program.info().map_err(GateError::Program)?.id();
        let (_, attached) = SchedClassifier::query_tcx(iface, TcAttachType::Egress)
            .map_err(|e| link_error("listing the egress TCX programs", iface, e))?;
        Ok(attached.iter().any(|p| p.id() == ours))
    }

    fn hold_pinned(&mut self, iface: &str, ifindex: u32, path: &Path) -> Result<(), GateError> {
        let open = || {
            PinnedLink::from_pin(path)
                .map_err(|e| link_error("reopening the pinned tracker link", iface, e))
        };
        let link = open()?;
        let spare = open().ok();
        self.tracker.links.insert(
            iface.into(),
            TrackerLink {
                ifindex,
                held: HeldTracker::Pinned {
                    link: Some(link),
                    spare,
                },
            },
        );
        Ok(())
    }

    /// Pins every tracker link again whose pin file was removed, so the
    /// tracker outlives the agent like the gate does.
    pub(super) fn check_tracker_pins(&mut self, dir: &Path) -> Vec<WatchEvent> {
        let mut events = Vec::new();
        for (iface, held) in &mut self.tracker.links {
            let HeldTracker::Pinned { link, spare } = &mut held.held else {
                continue;
            };
            let path: PathBuf = pins::tracker_link_pin(dir, iface);
            if path.exists() || spare.is_none() {
                continue;
            }
            let Some(current) = link.take() else { continue };
            let fd_link: FdLink = current.into();
            match fd_link.pin(&path) {
                Ok(pinned) => {
                    *link = Some(pinned);
                    *spare = PinnedLink::from_pin(&path).ok();
                    events.push(WatchEvent::PinRestored { path });
                }
                Err(e) => {
                    // `spare` keeps the tracker attached while this agent runs.
                    *link = spare.take();
                    events.push(WatchEvent::PinLost {
                        path,
                        error: e.to_string(),
                    });
                }
            }
        }
        events
    }
}

fn tracker_program(ebpf: &mut Ebpf) -> &mut SchedClassifier {
    ebpf.program_mut(maps::TRACKER)
        .and_then(|p| p.try_into().ok())
        .expect("tracker program checked at load")
}
