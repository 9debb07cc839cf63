//! The agent's state and the one place it changes.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::Context as _;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, Notify};
use tracing::{error, info, warn};

use super::{startup, views};
use crate::{
    api::view::TrafficView,
    audit::{
        denied::{DeniedAggregator, DeniedMinute},
        AuditLog,
    },
    gate::{clock, Gate, GrantSpec},
    lifecycle::{AuditEvent, Engine, Grant, Outcome, Records, Request, SystemClock},
    metrics::{self, Metrics},
    policy::Policy,
    store::Store,
};

/// A grant as stored: the lifecycle record plus its kernel stats slot, so a
/// restarted agent finds the same counters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredGrant {
    pub grant: Grant,
    pub slot: u32,
}

const NEXT_ID_META: &str = "engine_next_id";
/// Ended requests and grants stay listed (`jitctl list --history`) this
/// long; the audit log keeps them for ever.
const HISTORY_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// Everything that must change together.
pub struct Core {
    pub policy: Arc<Policy>,
    pub policy_path: PathBuf,
    pub engine: Engine,
    pub store: Arc<Store>,
    pub audit: AuditLog,
    pub gate: Gate,
    /// Kernel stats slot of every active grant.
    pub slots: HashMap<u64, u32>,
    pub denied: DeniedAggregator,
}

/// The agent, shared by its tasks.
pub struct Shared {
    core: Mutex<Core>,
    pub metrics: Metrics,
    pub events: broadcast::Sender<serde_json::Value>,
    /// Woken whenever a deadline may have moved earlier.
    pub deadline_changed: Notify,
    denied_ring: Mutex<Option<aya::maps::RingBuf<aya::maps::MapData>>>,
    bpf_logger: Mutex<Option<aya_log::EbpfLogger<&'static dyn log::Log>>>,
    pub interfaces: Vec<String>,
}

/// An operation failed; nothing it started was left applied.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    Refused(#[from] crate::lifecycle::Refusal),
    #[error("{0}")]
    Internal(String),
    /// One item of a batch failed, so none of the batch was applied.
    #[error("grant {} of the batch: {error}; no grant of the batch was made", .index + 1)]
    Item { index: usize, error: Box<OpError> },
}

fn internal(what: &str, e: impl std::fmt::Display) -> OpError {
    OpError::Internal(format!("{what}: {e}; nothing was changed"))
}

/// Brings the agent up to the point where it can serve.
pub fn start(policy_path: &Path, debug_bpf: bool) -> anyhow::Result<Shared> {
    let mut phases = Phases::new();
    let policy = Arc::new(startup::load_policy(policy_path)?);
    // Loading the programs (the verifier) and reading the pinned grant map
    // take as long as reading the store and rebuilding the engine: do both
    // at once. The old gate enforces meanwhile.
    let (gate, state) = std::thread::scope(|s| {
        let began = phases.start;
        let gate_policy = &policy;
        let gate = s.spawn(move || {
            let mut gate = startup::load_gate(gate_policy, debug_bpf)?;
            startup::apply_zones(&mut gate, gate_policy)
                .context("loading the protected zones into the gate")?;
            Ok::<_, anyhow::Error>((gate, began.elapsed()))
        });
        let state = restore_state(&policy, &mut phases);
        let gate = gate
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("loading the gate panicked")));
        (gate, state)
    });
    let (store, audit, engine, slots) = state?;
    let (gate, gate_took) = gate?;
    phases.note("gate loaded (in parallel)", gate_took.as_millis());
    phases.mark("gate ready");
    let (events, _) = broadcast::channel(1024);
    let mut core = Core {
        policy: policy.clone(),
        policy_path: policy_path.to_owned(),
        engine,
        store,
        audit,
        gate,
        slots,
        denied: DeniedAggregator::new(10_000, 32),
    };
    core.record(&serde_json::json!({
        "event": "agent_started",
        "version": env!("CARGO_PKG_VERSION"),
        "policy_digest": policy.digest(),
    }));

    // What ended while no agent ran ends now, with its audit records.
    let expired = core.engine.expire_due();
    let timed_out = core.engine.timeout_pending();
    core.persist_outcome_ids(
        expired
            .value
            .iter()
            .map(|g| g.id)
            .chain(timed_out.value.iter().map(|r| r.id)),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let ended: Vec<_> = expired
        .value
        .iter()
        .map(|g| (g.clone(), core.remove_from_kernel(g.id)))
        .collect();
    let mut records = core.end_records(&expired.events, &ended);
    records.extend(core.end_records(&timed_out.events, &[]));
    core.record_all(&records);

    phases.mark("ended what ended while stopped");
    // The kernel must hold exactly the active grants: add what is missing,
    // remove what is unknown or ended.
    let specs = core.active_specs()?;
    let report = core
        .gate
        .reconcile(&specs)
        .context("reconciling the kernel maps with the stored grants")?;
    phases.mark("kernel reconciled");
    info!(
        kept = report.kept,
        added = report.added,
        rewritten = report.rewritten,
        removed = report.removed,
        "kernel grant maps reconciled with the store"
    );
    core.record(&serde_json::json!({
        "event": "reconciled",
        "kept": report.kept, "added": report.added,
        "rewritten": report.rewritten, "removed": report.removed,
    }));

    let mode = startup::attach_mode(&policy);
    let mut interfaces = Vec::new();
    for iface in &policy.gate().interfaces {
        let attached = core
            .gate
            .attach(iface, mode)
            .with_context(|| format!("attaching the gate to {iface}"))?;
        interfaces.push(format!("{} ({})", attached.iface, attached.mode));
    }
    phases.mark("attached");
    info!(
        grants = core.slots.len(),
        "start-up took {} ms ({})",
        phases.total_ms(),
        phases.summary()
    );
    let ring = core.gate.take_denied_events();
    let logger = core.gate.take_logger();
    let metrics = Metrics::new();
    for (name, cap) in [
        ("grants", core.gate.capacity() as i64),
        ("grant_stats", core.gate.capacity() as i64),
        ("zones", jit_common::maps::ZONE_CAPACITY as i64),
    ] {
        metrics
            .map_capacity
            .get_or_create(&metrics::MapLabels { map: name })
            .set(cap);
    }
    let shared = Shared {
        core: Mutex::new(core),
        metrics,
        events,
        deadline_changed: Notify::new(),
        denied_ring: Mutex::new(ring),
        bpf_logger: Mutex::new(logger),
        interfaces,
    };
    shared.subscribe_audit();
    Ok(shared)
}

/// The store, the audit log, the engine rebuilt from the store, and each
/// grant's stats slot.
type Restored = (Arc<Store>, AuditLog, Engine, HashMap<u64, u32>);

fn restore_state(policy: &Arc<Policy>, phases: &mut Phases) -> anyhow::Result<Restored> {
    let store = startup::open_store(policy)?;
    phases.mark("store opened");
    let audit = startup::open_audit(policy, &store)?;
    phases.mark("audit log opened");
    let loaded = store
        .load_all::<Request, StoredGrant>()
        .context("reading the stored requests and grants")?;
    let next_id: u64 = store
        .get_meta(NEXT_ID_META)
        .context("reading the stored next id")?
        .unwrap_or(1);
    let mut slots = HashMap::new();
    let records = Records {
        next_id,
        requests: loaded.requests.into_iter().map(|(_, r)| r).collect(),
        grants: loaded
            .grants
            .into_iter()
            .map(|(_, g)| {
                slots.insert(g.grant.id, g.slot);
                g.grant
            })
            .collect(),
    };
    phases.mark("store read");
    let clock = Arc::new(SystemClock::new().context("reading the boot id")?);
    let engine = Engine::restore(policy.clone(), clock, records)
        .context("rebuilding requests and grants from the store")?;
    phases.mark("engine rebuilt");
    Ok((store, audit, engine, slots))
}

/// Timings of the start-up phases, logged so that a slow start says where
/// its time went.
struct Phases {
    start: std::time::Instant,
    last: std::time::Instant,
    done: Vec<(&'static str, u128)>,
}

impl Phases {
    fn new() -> Self {
        let now = std::time::Instant::now();
        Phases {
            start: now,
            last: now,
            done: Vec::new(),
        }
    }

    fn mark(&mut self, what: &'static str) {
        let now = std::time::Instant::now();
        self.done.push((what, (now - self.last).as_millis()));
        self.last = now;
    }

    /// A phase timed elsewhere (in parallel with the others).
    fn note(&mut self, what: &'static str, ms: u128) {
        self.done.push((what, ms));
    }

    fn total_ms(&self) -> u128 {
        self.start.elapsed().as_millis()
    }

    fn summary(&self) -> String {
        self.done
            .iter()
            .map(|(what, ms)| format!("{what} {ms} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Core {
    /// Appends to the audit log; a failure is logged loudly but does not
    /// undo the state change it describes.
    pub fn record(&self, event: &serde_json::Value) {
        if let Err(e) = self.audit.append(event) {
            error!("AUDIT LOG WRITE FAILED: {e}; event: {event}");
        }
    }

    /// Appends records as one write (one flush), logging a failure loudly
    /// like [`Core::record`].
    fn record_all(&self, records: &[serde_json::Value]) {
        if records.is_empty() {
            return;
        }
        if let Err(e) = self.audit.append_all(records) {
            error!(
                "AUDIT LOG WRITE FAILED: {e}; {} events: {}",
                records.len(),
                serde_json::Value::from(records.to_vec())
            );
        }
    }

    pub fn record_events(&self, events: &[AuditEvent]) {
        let records: Vec<_> = events.iter().map(|e| self.event_json(e, None)).collect();
        self.record_all(&records);
    }

    /// An event as its audit record, with the traffic totals of a grant
    /// that ended.
    fn event_json(
        &self,
        event: &AuditEvent,
        stats: Option<jit_common::GrantStats>,
    ) -> serde_json::Value {
        let mut v = serde_json::to_value(event).unwrap_or_else(|e| {
            error!("audit event does not serialize: {e}");
            serde_json::json!({"event": event.action.name(), "id": event.id})
        });
        if let (Some(obj), Some(stats)) = (v.as_object_mut(), stats) {
            obj.insert(
                "traffic".into(),
                serde_json::to_value(self.traffic(&stats)).unwrap_or_default(),
            );
        }
        v
    }

    /// Writes an operation's audit records before the operation takes
    /// effect: an operation that cannot be recorded is refused, and the
    /// engine goes back to what the store holds.
    fn audit_first(
        &mut self,
        events: &[AuditEvent],
        ended: Option<(&Grant, Option<jit_common::GrantStats>)>,
    ) -> Result<(), OpError> {
        for event in events {
            let stats = ended.and_then(|(g, stats)| stats.filter(|_| g.id == event.id));
            let v = self.event_json(event, stats);
            if let Err(e) = self.audit.append(&v) {
                self.rollback_engine();
                return Err(OpError::Internal(format!(
                    "the audit log cannot be written ({e}); the operation was refused and nothing was changed"
                )));
            }
        }
        Ok(())
    }

    /// Notes in the audit log that a recorded operation did not take effect.
    fn audit_failed(&self, events: &[AuditEvent], error: &OpError) {
        for event in events {
            self.record(&serde_json::json!({
                "event": "operation_failed",
                "id": event.id,
                "failed": event.action.name(),
                "error": error.to_string(),
            }));
        }
    }

    /// Runs the effect of an operation whose records are written, noting a
    /// failure in the log.
    fn effect<T>(
        &mut self,
        events: &[AuditEvent],
        f: impl FnOnce(&mut Core) -> Result<T, OpError>,
    ) -> Result<T, OpError> {
        let result = f(self);
        if let Err(e) = &result {
            self.audit_failed(events, e);
        }
        result
    }

    /// The records of grants' ends, with their traffic totals, and of the
    /// other `events`, in order.
    fn end_records(
        &self,
        events: &[AuditEvent],
        ended: &[(Grant, Option<jit_common::GrantStats>)],
    ) -> Vec<serde_json::Value> {
        let stats: HashMap<u64, jit_common::GrantStats> = ended
            .iter()
            .filter_map(|(g, stats)| stats.map(|s| (g.id, s)))
            .collect();
        events
            .iter()
            .map(|event| self.event_json(event, stats.get(&event.id).copied()))
            .collect()
    }

    pub fn traffic(&self, s: &jit_common::GrantStats) -> TrafficView {
        let now_boot = clock::boot_ns();
        let now_wall = Utc::now();
        let at = |ns: u64| (ns != 0).then(|| views::boot_to_wall(ns, now_boot, now_wall));
        TrafficView {
            packets: s.packets,
            bytes: s.bytes,
            first_seen: at(s.first_seen_ns),
            last_seen: at(s.last_seen_ns),
        }
    }

    fn spec(&self, grant: &Grant, slot: u32) -> GrantSpec {
        let rules = grant
            .rules
            .iter()
            .filter(|r| r.dst.addr().is_ipv4() == grant.source.is_ipv4())
            .map(|r| {
                let (port_lo, port_hi) = r.ports.map_or((0, u16::MAX), |p| (p.start, p.end));
                crate::gate::RuleSpec {
                    dst: r.dst,
                    proto: startup::protocol_number(r.protocol),
                    port_lo,
                    port_hi,
                }
            })
            .collect();
        GrantSpec {
            id: grant.id,
            src: grant.source,
            rules,
            expires_at_boot_ns: grant.expires_boot_ns,
            slot,
        }
    }

    /// Kernel specs of every active grant, giving slots to grants that
    /// have none (a store rebuilt after damage).
    fn active_specs(&mut self) -> anyhow::Result<Vec<GrantSpec>> {
        let active: Vec<Grant> = self.engine.active_grants().cloned().collect();
        let mut specs = Vec::new();
        for g in active {
            let slot = match self.slots.get(&g.id) {
                Some(slot) => *slot,
                None => {
                    let slot = self.gate.allocate_slot()?;
                    self.slots.insert(g.id, slot);
                    slot
                }
            };
            specs.push(self.spec(&g, slot));
        }
        Ok(specs)
    }

    /// Writes the current records of `ids` (request and grant, whichever
    /// exist) and the id counter in one durable transaction.
    fn persist_outcome_ids(&self, ids: impl IntoIterator<Item = u64>) -> Result<(), OpError> {
        let ids: Vec<u64> = ids.into_iter().collect();
        let next_id = self.engine.next_id();
        let result = self.store.transaction(|tx| {
            for id in &ids {
                if let Some(r) = self.engine.request_by_id(*id) {
                    tx.put_request(*id, r)?;
                }
                if let Some(g) = self.engine.grant_by_id(*id) {
                    let slot = self.slots.get(id).copied().unwrap_or(u32::MAX);
                    tx.put_grant(
                        *id,
                        &StoredGrant {
                            grant: g.clone(),
                            slot,
                        },
                    )?;
                }
            }
            tx.put_meta(NEXT_ID_META, &next_id)?;
            Ok::<(), crate::store::StoreError>(())
        });
        result.map_err(|e| OpError::Internal(format!("{e}")))
    }

    /// After a failed commit the engine may hold changes the store does
    /// not: rebuild it from the store, the source of truth.
    fn rollback_engine(&mut self) {
        let loaded = match self.store.load_all::<Request, StoredGrant>() {
            Ok(l) => l,
            Err(e) => {
                error!("cannot reread the store after a failed commit: {e}");
                return;
            }
        };
        let next_id = self
            .store
            .get_meta::<u64>(NEXT_ID_META)
            .ok()
            .flatten()
            .unwrap_or(1)
            .max(self.engine.next_id());
        let records = Records {
            next_id,
            requests: loaded.requests.into_iter().map(|(_, r)| r).collect(),
            grants: loaded.grants.into_iter().map(|(_, g)| g.grant).collect(),
        };
        match SystemClock::new().map_err(|e| e.to_string()).and_then(|c| {
            Engine::restore(self.policy.clone(), Arc::new(c), records).map_err(|e| e.to_string())
        }) {
            Ok(engine) => self.engine = engine,
            Err(e) => error!("cannot rebuild the engine after a failed commit: {e}"),
        }
    }

    /// Opens new grants: kernel first, then the store in one commit; a
    /// failure takes every kernel entry of them out again.
    fn open_grants(&mut self, grants: &[Grant]) -> Result<(), OpError> {
        let mut installed = Vec::with_capacity(grants.len());
        let mut failure = None;
        for grant in grants {
            let slot = match self.gate.allocate_slot() {
                Ok(slot) => slot,
                Err(e) => {
                    failure = Some(internal("no room in the gate", e));
                    break;
                }
            };
            if let Err(e) = self.gate.install(&self.spec(grant, slot)) {
                self.gate.free_slot(slot);
                failure = Some(internal("installing the grant in the kernel failed", e));
                break;
            }
            self.slots.insert(grant.id, slot);
            installed.push(grant.id);
        }
        let result = match failure {
            Some(e) => Err(e),
            None => self.persist_outcome_ids(grants.iter().map(|g| g.id)),
        };
        if result.is_err() {
            for id in installed {
                if let Some(slot) = self.slots.remove(&id) {
                    let _ = self.gate.remove(slot);
                }
            }
            self.rollback_engine();
        }
        result
    }

    /// Closes a grant: store first, then the kernel.
    fn close_grant(&mut self, grant: &Grant) -> Result<Option<jit_common::GrantStats>, OpError> {
        if let Err(e) = self.persist_outcome_ids([grant.id]) {
            self.rollback_engine();
            return Err(e);
        }
        Ok(self.remove_from_kernel(grant.id))
    }

    fn remove_from_kernel(&mut self, id: u64) -> Option<jit_common::GrantStats> {
        let slot = self.slots.remove(&id)?;
        match self.gate.remove(slot) {
            Ok(stats) => Some(stats),
            Err(e) => {
                // The kernel still ends the grant at its expiry; say so loudly.
                error!(grant = id, "removing grant #{id} from the kernel failed: {e}; its kernel expiry still applies");
                None
            }
        }
    }

    fn persist_only(&mut self, ids: &[u64]) -> Result<(), OpError> {
        if let Err(e) = self.persist_outcome_ids(ids.iter().copied()) {
            self.rollback_engine();
            return Err(e);
        }
        Ok(())
    }

    pub fn request(
        &mut self,
        req: crate::lifecycle::AccessRequest,
    ) -> Result<(String, serde_json::Value), OpError> {
        let out = self.engine.request(req)?;
        let message = out.value.to_string();
        match &out.value {
            crate::lifecycle::Requested::Pending(r) => {
                self.audit_first(&out.events, None)?;
                let id = r.id;
                self.effect(&out.events, |c| c.persist_only(&[id]))?;
                Ok((
                    message,
                    serde_json::to_value(views::request_view(r)).unwrap_or_default(),
                ))
            }
            crate::lifecycle::Requested::Active(g) => {
                let g = g.clone();
                self.audit_first(&out.events, None)?;
                self.effect(&out.events, |c| c.open_grants(std::slice::from_ref(&g)))?;
                Ok((message, self.view_of(g.id)))
            }
        }
    }

    pub fn approve(
        &mut self,
        id: u64,
        approver: &str,
        note: Option<String>,
    ) -> Result<(String, serde_json::Value), OpError> {
        let out = self.engine.approve(id, approver, note)?;
        let message = out.value.to_string();
        self.audit_first(&out.events, None)?;
        match &out.value {
            crate::lifecycle::Approved::Recorded(r) => {
                let id = r.id;
                self.effect(&out.events, |c| c.persist_only(&[id]))?
            }
            crate::lifecycle::Approved::Activated(g) => {
                let g = g.clone();
                self.effect(&out.events, |c| c.open_grants(std::slice::from_ref(&g)))?;
            }
        }
        Ok((message, self.view_of(id)))
    }

    pub fn close_request(
        &mut self,
        out: Outcome<Request>,
        verb: &str,
    ) -> Result<(String, serde_json::Value), OpError> {
        self.audit_first(&out.events, None)?;
        let id = out.value.id;
        self.effect(&out.events, |c| c.persist_only(&[id]))?;
        Ok((
            format!("request #{} {verb}", out.value.id),
            self.view_of(out.value.id),
        ))
    }

    pub fn grant(
        &mut self,
        admin: &str,
        req: crate::lifecycle::AccessRequest,
    ) -> Result<(String, serde_json::Value), OpError> {
        let out = self.engine.grant(admin, req)?;
        let g = out.value.clone();
        self.audit_first(&out.events, None)?;
        self.effect(&out.events, |c| c.open_grants(std::slice::from_ref(&g)))?;
        Ok((
            format!(
                "grant #{} is active until {} ({})",
                g.id,
                g.expires_wall.format("%Y-%m-%d %H:%M:%S UTC"),
                crate::policy::format_duration(g.length)
            ),
            self.view_of(g.id),
        ))
    }

    /// Admin: many grants in one call, all or none. The batch shares one
    /// audit write and one store commit, which is what makes it fast.
    pub fn grant_batch(
        &mut self,
        admin: &str,
        reqs: Vec<crate::lifecycle::AccessRequest>,
    ) -> Result<Vec<Grant>, OpError> {
        let mut made: Vec<Grant> = Vec::with_capacity(reqs.len());
        let mut events = Vec::with_capacity(reqs.len());
        for (index, req) in reqs.into_iter().enumerate() {
            match self.engine.grant(admin, req) {
                Ok(out) => {
                    events.extend(out.events);
                    made.push(out.value);
                }
                Err(refusal) => {
                    self.engine.discard_new(made.iter().map(|g| g.id));
                    return Err(OpError::Item {
                        index,
                        error: Box::new(refusal.into()),
                    });
                }
            }
        }
        if let Err(e) = self.audit.append_all(&events) {
            self.engine.discard_new(made.iter().map(|g| g.id));
            return Err(OpError::Internal(format!(
                "the audit log cannot be written ({e}); the batch was refused and nothing was changed"
            )));
        }
        self.effect(&events, |c| c.open_grants(&made))?;
        Ok(made)
    }

    pub fn end(
        &mut self,
        out: Outcome<Grant>,
        verb: &str,
    ) -> Result<(String, serde_json::Value), OpError> {
        let g = out.value.clone();
        let before = self
            .slots
            .get(&g.id)
            .and_then(|slot| self.gate.stats(*slot).ok());
        self.audit_first(&out.events, Some((&g, before)))?;
        let stats = self.effect(&out.events, |c| c.close_grant(&g))?;
        let mut view = views::grant_view(
            &g,
            self.engine.request_by_id(g.id),
            stats.map(|s| self.traffic(&s)),
        );
        view.state = g.state.to_string();
        Ok((
            format!("grant #{} {verb}", g.id),
            serde_json::to_value(view).unwrap_or_default(),
        ))
    }

    pub fn extend(&mut self, out: Outcome<Grant>) -> Result<(String, serde_json::Value), OpError> {
        let g = out.value.clone();
        self.audit_first(&out.events, None)?;
        // Store first: a failed commit must not leave a longer kernel expiry.
        let id = g.id;
        self.effect(&out.events, |c| c.persist_only(&[id]))?;
        if let Some(slot) = self.slots.get(&g.id).copied() {
            if let Err(e) = self.gate.set_expiry(slot, g.expires_boot_ns) {
                error!(
                    grant = g.id,
                    "updating the kernel expiry of #{} failed: {e}", g.id
                );
            }
        }
        Ok((
            format!(
                "grant #{} now ends {}",
                g.id,
                g.expires_wall.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            self.view_of(g.id),
        ))
    }

    /// Ends what is due; returns the expiry lags in seconds.
    pub fn run_deadlines(&mut self) -> Vec<f64> {
        let expired = self.engine.expire_due();
        let timed_out = self.engine.timeout_pending();
        if expired.value.is_empty() && timed_out.value.is_empty() {
            return Vec::new();
        }
        let ids: Vec<u64> = expired
            .value
            .iter()
            .map(|g| g.id)
            .chain(timed_out.value.iter().map(|r| r.id))
            .collect();
        // The kernel has already stopped these grants at their expiry; the
        // map entries go now even if the store cannot record it yet.
        let mut lags = Vec::new();
        let mut ended = Vec::new();
        for g in &expired.value {
            let stats = self.remove_from_kernel(g.id);
            lags.push(clock::boot_ns().saturating_sub(g.expires_boot_ns) as f64 / 1e9);
            ended.push((g.clone(), stats));
        }
        if let Err(e) = self.persist_outcome_ids(ids) {
            error!("recording expiries failed: {e}; they will be recorded again at the next start");
        }
        let mut records = self.end_records(&expired.events, &ended);
        records.extend(self.end_records(&timed_out.events, &[]));
        self.record_all(&records);
        lags
    }

    /// Forgets history older than `HISTORY_KEEP`; run from the minute loop.
    pub fn prune_history(&mut self) {
        let pruned = self.engine.prune(HISTORY_KEEP);
        if pruned.is_empty() {
            return;
        }
        let result = self.store.transaction(|tx| {
            for id in &pruned {
                tx.remove_request(*id)?;
                tx.remove_grant(*id)?;
            }
            Ok::<(), crate::store::StoreError>(())
        });
        if let Err(e) = result {
            warn!("forgetting {} old records in the store failed: {e}; they are listed again after a restart", pruned.len());
        }
    }

    pub fn view_of(&self, id: u64) -> serde_json::Value {
        let shown = self.engine.show(id);
        let view = match shown {
            Some(s) => match (s.grant, s.request) {
                (Some(g), r) => {
                    let traffic = self
                        .slots
                        .get(&id)
                        .and_then(|slot| self.gate.stats(*slot).ok())
                        .map(|s| self.traffic(&s));
                    Some(views::grant_view(g, r, traffic))
                }
                (None, Some(r)) => Some(views::request_view(r)),
                (None, None) => None,
            },
            None => None,
        };
        serde_json::to_value(view).unwrap_or_default()
    }

    /// Reloads the policy atomically: a valid one replaces the old, an
    /// invalid one is refused and the old stays in force.
    pub fn reload_policy(&mut self, trigger: &str) -> Result<String, String> {
        let policy = match Policy::load(&self.policy_path) {
            Ok(p) => Arc::new(p),
            Err(errors) => {
                let text = errors.to_string();
                self.record(&serde_json::json!({
                    "event": "policy_reload_refused", "trigger": trigger, "errors": text,
                }));
                return Err(format!(
                    "the new policy is invalid; the running policy stays in force:\n{text}"
                ));
            }
        };
        if policy.gate().interfaces != self.policy.gate().interfaces
            || policy.gate().bpffs_dir != self.policy.gate().bpffs_dir
            || policy.gate().state_dir != self.policy.gate().state_dir
            || policy.gate().map_capacity != self.policy.gate().map_capacity
        {
            warn!("gate interfaces, directories and capacity change only at restart");
        }
        if let Err(e) = startup::apply_zones(&mut self.gate, &policy) {
            // set_zones adds before it removes; re-apply the old zones.
            let _ = startup::apply_zones(&mut self.gate, &self.policy);
            return Err(format!("loading the new zones into the kernel failed: {e}; the running policy stays in force"));
        }
        let out = self.engine.reapply_policy(policy.clone());
        self.policy = policy.clone();
        let mut ids: Vec<u64> = out.value.revoked.iter().map(|g| g.id).collect();
        ids.extend(out.value.cancelled.iter().map(|r| r.id));
        ids.extend(out.value.activated.iter().map(|g| g.id));
        for g in &out.value.activated {
            if let Ok(slot) = self.gate.allocate_slot() {
                let spec = self.spec(g, slot);
                match self.gate.install(&spec) {
                    Ok(()) => {
                        self.slots.insert(g.id, slot);
                    }
                    Err(e) => error!("activating #{} after the reload failed: {e}", g.id),
                }
            }
        }
        if let Err(e) = self.persist_outcome_ids(ids) {
            error!("recording the reload's changes failed: {e}");
        }
        let mut summary = Vec::new();
        let mut ended = Vec::new();
        for g in &out.value.revoked {
            ended.push((g.clone(), self.remove_from_kernel(g.id)));
            summary.push(format!("revoked #{}", g.id));
        }
        self.record_all(&self.end_records(&out.events, &ended));
        for r in &out.value.cancelled {
            summary.push(format!("cancelled request #{}", r.id));
        }
        self.record(&serde_json::json!({
            "event": "policy_reloaded", "trigger": trigger, "digest": policy.digest(),
            "revoked": out.value.revoked.len(), "cancelled": out.value.cancelled.len(),
        }));
        Ok(if summary.is_empty() {
            "policy reloaded; every grant is still allowed".into()
        } else {
            format!("policy reloaded; {}", summary.join(", "))
        })
    }

    pub fn record_denied_minute(&self, minute: DeniedMinute) {
        match serde_json::to_value(&minute) {
            Ok(mut v) => {
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("event".into(), "denied_attempts".into());
                }
                self.record(&v)
            }
            Err(e) => error!("denied summary does not serialize: {e}"),
        }
    }
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn policy_snapshot(&self) -> Arc<Policy> {
        self.lock().policy.clone()
    }

    pub fn take_bpf_logger(&self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self.bpf_logger.lock().ok()?.take()
    }

    pub fn take_denied_ring(&self) -> Option<aya::maps::RingBuf<aya::maps::MapData>> {
        self.denied_ring.lock().ok()?.take()
    }

    fn subscribe_audit(&self) {
        let tx = self.events.clone();
        self.lock().audit.subscribe(move |record| {
            // Nobody watching: skip building the summary.
            if tx.receiver_count() == 0 {
                return;
            }
            let event = record
                .event
                .get("event")
                .and_then(|e| e.as_str())
                .unwrap_or("event")
                .to_owned();
            let summary = summarize(&record.event);
            let _ = tx.send(serde_json::json!({
                "seq": record.seq,
                "time": record.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "event": event,
                "summary": summary,
                "record": record.event,
            }));
        });
    }

    pub fn reload_policy(&self, trigger: &str) -> Result<String, String> {
        let result = self.lock().reload_policy(trigger);
        let label = if result.is_ok() { "success" } else { "invalid" };
        self.metrics
            .policy_reloads
            .get_or_create(&metrics::ResultLabels { result: label })
            .inc();
        self.deadline_changed.notify_one();
        result
    }

    pub fn denied_batch(&self, batch: Vec<jit_common::DeniedEvent>) {
        let mut core = self.lock();
        let now = Utc::now();
        for event in &batch {
            let zone = core
                .policy
                .zones()
                .iter()
                .find(|z| z.id.get() as u32 == event.zone_id)
                .map_or_else(|| event.zone_id.to_string(), |z| z.name.clone());
            self.metrics
                .denied_attempts
                .get_or_create(&metrics::ZoneLabels { zone })
                .inc();
            let attempt = super::denied::to_attempt(event);
            if let Some(minute) = core.denied.record(&attempt, now) {
                core.record_denied_minute(minute);
            }
        }
    }

    pub fn flush_denied(&self) {
        let mut core = self.lock();
        if let Some(minute) = core.denied.flush_all() {
            core.record_denied_minute(minute);
        }
    }

    /// Refreshes the gauges after any change.
    pub fn refresh_counts(&self, core: &Core) {
        self.metrics
            .active_grants
            .set(core.engine.active_count() as i64);
        self.metrics
            .pending_requests
            .set(core.engine.pending_count() as i64);
    }
}

fn summarize(event: &serde_json::Value) -> String {
    let get = |k: &str| {
        event
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned()
    };
    let id = event
        .get("id")
        .and_then(|v| v.as_u64())
        .map(|i| format!("#{i} "))
        .unwrap_or_default();
    let actor = match event.get("actor") {
        Some(serde_json::Value::Object(o)) => o
            .get("user")
            .and_then(|u| u.as_str())
            .unwrap_or("")
            .to_owned(),
        Some(serde_json::Value::String(s)) if s == "system" => "jitgate".into(),
        _ => String::new(),
    };
    let user = get("user");
    let target = get("target");
    if target.is_empty() {
        return event.to_string();
    }
    let by = if actor.is_empty() || actor == user {
        String::new()
    } else {
        format!(" by {actor}")
    };
    format!("{id}{user} → {target}{by}")
}

/// Sleeps until the engine's next deadline, then ends what is due.
pub async fn expiry_loop(shared: Arc<Shared>) {
    loop {
        let next = shared.lock().engine.next_deadline_boot_ns();
        let notified = shared.deadline_changed.notified();
        match next {
            None => notified.await,
            Some(at) => {
                let now = clock::boot_ns();
                if at > now {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_nanos(at - now)) => {}
                        _ = notified => continue,
                    }
                }
            }
        }
        let s = shared.clone();
        let lags = tokio::task::spawn_blocking(move || {
            let mut core = s.lock();
            let lags = core.run_deadlines();
            s.refresh_counts(&core);
            lags
        })
        .await
        .unwrap_or_default();
        for lag in lags {
            shared.metrics.expiry_lag.observe(lag);
            shared.metrics.transition("expired");
        }
    }
}

/// Ticks of the minute loop between two history prunes.
const PRUNE_EVERY_TICKS: u64 = 12;

/// Closes denied-attempt minutes that have ended and, once a minute, forgets
/// old history.
pub async fn minute_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    for n in 0u64.. {
        tick.tick().await;
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let mut core = s.lock();
            if let Some(minute) = core.denied.flush_due(Utc::now()) {
                core.record_denied_minute(minute);
            }
            if n % PRUNE_EVERY_TICKS == 0 {
                core.prune_history();
            }
        })
        .await;
    }
}

/// The source address a request is for: the one given, or the user's only
/// single-address source prefix.
pub fn pick_source(user: &crate::policy::User, given: Option<&str>) -> Result<IpAddr, String> {
    if let Some(text) = given {
        return text.parse().map_err(|_| {
            format!("`{text}` is not an IP address (use --from 10.1.0.5 or --from 2001:db8::5)")
        });
    }
    let singles: Vec<IpAddr> = user
        .source_prefixes
        .iter()
        .filter(|p| p.prefix_len() == p.max_prefix_len())
        .map(|p| p.addr())
        .collect();
    match singles.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!(
            "say which address the access is for with --from (your source prefixes: {})",
            user.source_prefixes
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        many => Err(format!(
            "you have several source addresses ({}); pick one with --from",
            many.iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// How often the watchdog looks at interfaces and pins.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Re-attaches to re-created interfaces and restores removed pins, loudly.
pub async fn watchdog_loop(shared: Arc<Shared>) {
    use crate::gate::WatchEvent;
    let mut tick = tokio::time::interval(WATCH_EVERY);
    loop {
        tick.tick().await;
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let mut core = s.lock();
            let mut events = core.gate.check_interfaces();
            events.extend(core.gate.check_pins());
            for event in events {
                let record = match &event {
                    WatchEvent::InterfaceGone { iface } => {
                        warn!(iface, "gated interface disappeared; the gate will re-attach when it returns");
                        serde_json::json!({"event": "interface_gone", "iface": iface})
                    }
                    WatchEvent::Reattached { iface, mode } => {
                        warn!(iface, mode, "gated interface is back; the gate is re-attached");
                        serde_json::json!({"event": "interface_reattached", "iface": iface, "mode": mode})
                    }
                    WatchEvent::ReattachFailed { iface, error } => {
                        error!(iface, "RE-ATTACHING THE GATE FAILED: {error}; retrying");
                        serde_json::json!({"event": "interface_reattach_failed", "iface": iface, "error": error})
                    }
                    WatchEvent::PinRestored { path } => {
                        error!(path = %path.display(), "a gate pin was removed under the running agent; restored it");
                        serde_json::json!({"event": "pin_restored", "path": path})
                    }
                    WatchEvent::PinLost { path, error } => {
                        error!(path = %path.display(), "GATE PIN LOST AND NOT RESTORED: {error}");
                        serde_json::json!({"event": "pin_lost", "path": path, "error": error})
                    }
                };
                core.record(&record);
            }
        })
        .await;
    }
}
