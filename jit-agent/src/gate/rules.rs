//! Grants as the agent hands them to the gate, and their translation into
//! kernel rules grouped by flow key.

use std::{collections::HashMap, net::IpAddr};

use ipnet::IpNet;
use jit_common::{proto, FlowKey, GrantRule, GrantSet, MAX_RULES_PER_FLOW};

use super::{addr, GateError};

/// One destination a grant opens.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleSpec {
    pub dst: IpNet,
    pub proto: u8,
    /// Inclusive port range; ignored (stored as 0..=65535) for protocols
    /// without ports.
    pub port_lo: u16,
    pub port_hi: u16,
}

/// A grant as the kernel enforces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantSpec {
    pub id: u64,
    /// Exact source address of the holder.
    pub src: IpAddr,
    pub rules: Vec<RuleSpec>,
    /// Expiry on the boot clock, nanoseconds.
    pub expires_at_boot_ns: u64,
    /// Slot in the per-grant stats array, assigned by `Gate::allocate_slot`.
    pub slot: u32,
}

/// Protected prefixes with their zone ids, as loaded into the trie.
#[derive(Clone, Debug, Default)]
pub struct ZoneTable {
    entries: Vec<(IpNet, u32)>,
}

impl ZoneTable {
    pub fn new(mut entries: Vec<(IpNet, u32)>) -> Self {
        for (net, _) in &mut entries {
            *net = net.trunc();
        }
        ZoneTable { entries }
    }

    pub fn entries(&self) -> &[(IpNet, u32)] {
        &self.entries
    }

    /// The zone the kernel's longest-prefix lookup gives every address of
    /// `net`, or an error when that is not one zone.
    pub fn zone_of(&self, net: IpNet) -> Result<u32, GateError> {
        let net = net.trunc();
        let best = self
            .entries
            .iter()
            .filter(|(zone, _)| zone.contains(&net))
            .max_by_key(|(zone, _)| zone.prefix_len());
        let Some((_, id)) = best else {
            return Err(GateError::OutsideZones {
                prefix: net.to_string(),
            });
        };
        if let Some((inner, _)) = self
            .entries
            .iter()
            .find(|(zone, _)| zone.prefix_len() > net.prefix_len() && net.contains(zone))
        {
            return Err(GateError::SpansZones {
                prefix: net.to_string(),
                inner: inner.to_string(),
            });
        }
        Ok(*id)
    }
}

/// The kernel rules of one grant, each with its flow key.
pub fn kernel_rules(
    spec: &GrantSpec,
    zones: &ZoneTable,
) -> Result<Vec<(FlowKey, GrantRule)>, GateError> {
    let src = addr::to16(spec.src);
    spec.rules
        .iter()
        .map(|rule| {
            let zone_id = zones.zone_of(rule.dst)?;
            let (dst, prefix_len) = addr::net16(rule.dst);
            let (port_lo, port_hi) = if proto::has_ports(rule.proto) {
                (rule.port_lo, rule.port_hi)
            } else {
                (0, u16::MAX)
            };
            Ok((
                FlowKey {
                    src,
                    zone_id,
                    proto: rule.proto,
                    _pad: [0; 3],
                },
                GrantRule {
                    dst,
                    expires_at_ns: spec.expires_at_boot_ns,
                    stats_index: spec.slot,
                    port_lo,
                    port_hi,
                    prefix_len,
                    _pad: [0; 7],
                },
            ))
        })
        .collect()
}

/// Adds rules to a set, failing rather than evicting when it is full.
pub fn push_rule(set: &mut GrantSet, key: &FlowKey, rule: GrantRule) -> Result<(), GateError> {
    let held = set.count as usize;
    if held >= MAX_RULES_PER_FLOW {
        return Err(GateError::FlowFull {
            src: addr::from16(key.src, 0).to_string(),
            zone: key.zone_id,
            proto: key.proto,
            held,
            max: MAX_RULES_PER_FLOW,
        });
    }
    set.rules[held] = rule;
    set.count += 1;
    Ok(())
}

/// Removes every rule of a stats slot, keeping the others packed.
pub fn remove_slot(set: &mut GrantSet, slot: u32) {
    let mut kept = GrantSet::default();
    for rule in &set.rules[..set.count as usize] {
        if rule.stats_index != slot {
            kept.rules[kept.count as usize] = *rule;
            kept.count += 1;
        }
    }
    *set = kept;
}

/// Builds the full desired key → set table for a list of grants.
pub fn desired_sets(
    grants: &[GrantSpec],
    zones: &ZoneTable,
) -> Result<HashMap<FlowKey, GrantSet>, GateError> {
    let mut sets: HashMap<FlowKey, GrantSet> = HashMap::new();
    for grant in grants {
        for (key, rule) in kernel_rules(grant, zones)? {
            push_rule(sets.entry(key).or_default(), &key, rule)?;
        }
    }
    Ok(sets)
}
