//! Bringing the agent up: policy, store, audit log, gate, adoption.

use std::{net::IpAddr, path::Path, sync::Arc};

use anyhow::{bail, Context as _};
use ipnet::IpNet;
use tracing::{info, warn};

use crate::{
    audit::AuditLog,
    gate::{AttachMode, FlowIdle, Gate, GateError, GateOptions, RuleSpec},
    policy::{self, GroupRef, Policy, Protocol},
    store::Store,
};

/// Reads and validates the policy, or explains every error.
pub fn load_policy(path: &Path) -> anyhow::Result<Policy> {
    match Policy::load(path) {
        Ok(policy) => Ok(policy),
        Err(errors) => bail!(
            "the policy at {} is invalid; nothing was started:\n{errors}",
            path.display()
        ),
    }
}

pub fn open_store(policy: &Policy) -> anyhow::Result<Arc<Store>> {
    let dir = &policy.gate().state_dir;
    let store = Store::open(dir)
        .with_context(|| format!("opening the state store in {}", dir.display()))?;
    let report = store.open_report();
    if let Some(damage) = &report.damage {
        warn!("{damage}; grants will be rebuilt from the kernel where possible");
    }
    if report.repaired {
        info!("the state store was not closed cleanly and has been repaired; no committed change was lost");
    }
    Ok(Arc::new(store))
}

pub fn open_audit(policy: &Policy, store: &Arc<Store>) -> anyhow::Result<AuditLog> {
    let dir = &policy.gate().state_dir;
    let log = AuditLog::open_with_anchor(dir, store.clone())
        .with_context(|| format!("opening the audit log in {}", dir.display()))?;
    Ok(log)
}

pub fn attach_mode(policy: &Policy) -> AttachMode {
    match policy.gate().attach_mode {
        policy::AttachMode::Auto => AttachMode::Auto,
        policy::AttachMode::Driver => AttachMode::Driver,
        policy::AttachMode::Generic => AttachMode::Generic,
    }
}

pub fn load_gate(policy: &Policy, debug_log: bool) -> anyhow::Result<Gate> {
    let gate = Gate::load(&GateOptions {
        pin_dir: Some(policy.gate().bpffs_dir.clone()),
        capacity: policy.gate().map_capacity,
        debug_log,
        denied_events_per_sec: jit_common::maps::DEFAULT_DENIED_EVENTS_PER_SEC,
    })
    .context("loading the XDP gate")?;
    if gate.adopted_maps {
        info!(pin_dir = %policy.gate().bpffs_dir.display(), "adopted the pinned gate maps of an earlier run");
    }
    Ok(gate)
}

/// The zone prefixes with their kernel ids.
pub fn zone_entries(policy: &Policy) -> Vec<(IpNet, u32)> {
    policy
        .zones()
        .iter()
        .flat_map(|z| z.prefixes.iter().map(move |p| (*p, z.id.get() as u32)))
        .collect()
}

/// Loads the policy's zones into the gate, with the host flag of host
/// zones and the idle timeouts of the flows those hosts start. Timeouts go
/// first: a zone that becomes a host zone is judged by this policy's.
pub fn apply_zones(gate: &mut Gate, policy: &Policy) -> Result<(), GateError> {
    let idle = policy.gate().host_idle;
    gate.set_flow_idle(FlowIdle {
        tcp: idle.tcp,
        udp: idle.udp,
        icmp: idle.icmp,
    })?;
    let hosts: Vec<u32> = policy
        .zones()
        .iter()
        .filter(|z| z.host)
        .map(|z| z.id.get() as u32)
        .collect();
    gate.set_zones_with_hosts(&zone_entries(policy), &hosts)
}

/// The kernel rules a target opens for one source address: only rules of
/// the source's address family can ever match.
pub fn kernel_rules(policy: &Policy, target: &str, source: IpAddr) -> Vec<RuleSpec> {
    let Some(rules) = policy.rules_of(target) else {
        return Vec::new();
    };
    rules
        .iter()
        .filter(|r| r.dst.addr().is_ipv4() == source.is_ipv4())
        .map(|r| {
            let (port_lo, port_hi) = r.ports.map_or((0, u16::MAX), |p| (p.start, p.end));
            RuleSpec {
                dst: r.dst,
                proto: protocol_number(r.protocol),
                port_lo,
                port_hi,
            }
        })
        .collect()
}

pub fn protocol_number(p: Protocol) -> u8 {
    p.number().unwrap_or(jit_common::proto::ANY)
}

/// Resolves the socket's group to a gid.
pub fn socket_group(policy: &Policy) -> anyhow::Result<Option<u32>> {
    match &policy.gate().api.group {
        None => Ok(None),
        Some(GroupRef::Gid(gid)) => Ok(Some(*gid)),
        Some(GroupRef::Name(name)) => {
            let group = nix::unistd::Group::from_name(name)
                .with_context(|| format!("looking up group {name}"))?
                .with_context(|| {
                    format!("group {name} (gate.api.group) does not exist; create it or name an existing group")
                })?;
            Ok(Some(group.gid.as_raw()))
        }
    }
}
