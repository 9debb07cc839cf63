//! The grant rule, free of any program context so that both the XDP gate
//! (inbound packets) and the egress tracker (is this the reply to a granted
//! peer?) ask the same question.

use jit_common::{proto, FlowKey, Reason, MAX_RULES_PER_FLOW};

use crate::maps::JG_GRANTS;

/// The grant rule: exact source, destination inside the rule's prefix,
/// protocol, and (for TCP, UDP, SCTP) destination port inside the range,
/// before the rule's boot-clock expiry. Rules for any protocol live under
/// `proto::ANY` and are consulted only when the exact protocol has no match.
///
/// Returns the verdict and, for `PassGrant`, the matching rule's stats slot.
#[inline(always)]
pub fn check_grant(
    src: &[u8; 16],
    dst: &[u8; 16],
    zone_id: u32,
    proto: u8,
    dport: u16,
    now: u64,
) -> (Reason, u32) {
    let exact = match_flow(src, dst, zone_id, proto, proto, dport, now);
    if exact.0 == Reason::PassGrant {
        return exact;
    }
    let any = match_flow(src, dst, zone_id, proto::ANY, proto, dport, now);
    if any.0 == Reason::PassGrant || exact.0 == Reason::DropNoGrant {
        any
    } else {
        exact
    }
}

#[inline(always)]
fn match_flow(
    src: &[u8; 16],
    dst: &[u8; 16],
    zone_id: u32,
    key_proto: u8,
    proto: u8,
    dport: u16,
    now: u64,
) -> (Reason, u32) {
    let key = FlowKey {
        src: *src,
        zone_id,
        proto: key_proto,
        _pad: [0; 3],
    };
    // SAFETY: the value is read in place under RCU; a concurrent update
    // replaces the whole element, so we see either the old or the new set.
    let Some(set) = (unsafe { JG_GRANTS.get(&key) }) else {
        return (Reason::DropNoGrant, 0);
    };
    let (dst_hi, dst_lo) = halves(dst);
    let ports = proto::has_ports(proto);
    let mut expired = false;
    let count = set.count as usize;
    for i in 0..MAX_RULES_PER_FLOW {
        if i >= count {
            break;
        }
        let rule = &set.rules[i];
        let (rule_hi, rule_lo) = halves(&rule.dst);
        let (mask_hi, mask_lo) = prefix_masks(rule.prefix_len);
        if dst_hi & mask_hi != rule_hi || dst_lo & mask_lo != rule_lo {
            continue;
        }
        if ports && (dport < rule.port_lo || dport > rule.port_hi) {
            continue;
        }
        if now >= rule.expires_at_ns {
            expired = true;
            continue;
        }
        return (Reason::PassGrant, rule.stats_index);
    }
    if expired {
        (Reason::DropExpired, 0)
    } else {
        (Reason::DropNoGrant, 0)
    }
}

#[inline(always)]
fn halves(addr: &[u8; 16]) -> (u64, u64) {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&addr[..8]);
    lo.copy_from_slice(&addr[8..]);
    (u64::from_be_bytes(hi), u64::from_be_bytes(lo))
}

/// Masks for a prefix length in the 128-bit space, without shifting by 64
/// (undefined in Rust and in BPF).
#[inline(always)]
fn prefix_masks(len: u8) -> (u64, u64) {
    let len = if len > 128 { 128 } else { len as u32 };
    if len == 0 {
        (0, 0)
    } else if len < 64 {
        (u64::MAX << (64 - len), 0)
    } else if len == 64 {
        (u64::MAX, 0)
    } else if len < 128 {
        (u64::MAX, u64::MAX << (128 - len))
    } else {
        (u64::MAX, u64::MAX)
    }
}
