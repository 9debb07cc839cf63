//! Turning lifecycle records into the views jitctl prints.

use chrono::{DateTime, Utc};

use crate::{
    api::view::{AccessView, TrafficView},
    lifecycle::{Grant, Request},
};

/// Boot-clock nanoseconds to wall time, through the current offset.
pub fn boot_to_wall(boot_ns: u64, now_boot_ns: u64, now_wall: DateTime<Utc>) -> DateTime<Utc> {
    let delta = boot_ns as i128 - now_boot_ns as i128;
    now_wall + chrono::Duration::nanoseconds(delta.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
}

pub fn rule_text(rule: &crate::lifecycle::GrantRule) -> String {
    match rule.ports {
        Some(p) if p.start == p.end => format!("{} {}:{}", rule.protocol, rule.dst, p.start),
        Some(p) => format!("{} {}:{}-{}", rule.protocol, rule.dst, p.start, p.end),
        None => format!("{} {}", rule.protocol, rule.dst),
    }
}

pub fn request_view(r: &Request) -> AccessView {
    AccessView {
        id: r.id,
        state: r.state.to_string().replace(' ', "_"),
        user: r.user.clone(),
        target: r.target.clone(),
        source: r.source.to_string(),
        rules: Vec::new(),
        duration_secs: r.duration.as_secs(),
        created_at: r.requested_wall,
        activated_at: None,
        expires_at: None,
        ended_at: r.closed.as_ref().map(|c| c.wall),
        approvals: r.approvals.iter().map(|a| a.approver.clone()).collect(),
        approvals_needed: r.approvals_needed,
        reason: r.reason.clone(),
        traffic: None,
    }
}

pub fn grant_view(
    g: &Grant,
    request: Option<&Request>,
    traffic: Option<TrafficView>,
) -> AccessView {
    AccessView {
        id: g.id,
        state: g.state.to_string(),
        user: g.user.clone(),
        target: g.target.clone(),
        source: g.source.to_string(),
        rules: g
            .rules
            .iter()
            .filter(|r| r.dst.addr().is_ipv4() == g.source.is_ipv4())
            .map(rule_text)
            .collect(),
        duration_secs: g.length.as_secs(),
        created_at: request.map_or(g.activated_wall, |r| r.requested_wall),
        activated_at: Some(g.activated_wall),
        expires_at: Some(g.expires_wall),
        ended_at: g.ended.as_ref().map(|c| c.wall),
        approvals: request
            .map(|r| r.approvals.iter().map(|a| a.approver.clone()).collect())
            .unwrap_or_default(),
        approvals_needed: request.map_or(0, |r| r.approvals_needed),
        reason: g.reason.clone(),
        traffic,
    }
}
