//! What the agent reports about requests and grants: one view per access
//! item, from request to end, shared by the agent (which fills it) and
//! jitctl (which prints it).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessView {
    pub id: u64,
    /// pending, active, expired, revoked, released, denied, cancelled, timed_out.
    pub state: String,
    pub user: String,
    pub target: String,
    pub source: String,
    /// Destinations the grant opens, e.g. "tcp 10.0.2.0/24:22".
    #[serde(default)]
    pub rules: Vec<String>,
    pub duration_secs: u64,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub activated_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub ended_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub approvals: Vec<String>,
    #[serde(default)]
    pub approvals_needed: u32,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub traffic: Option<TrafficView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficView {
    pub packets: u64,
    pub bytes: u64,
    #[serde(default)]
    pub first_seen: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_seen: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub interfaces: Vec<String>,
    pub pin_dir: String,
    pub policy: String,
    pub zones: usize,
    pub active_grants: u64,
    pub pending_requests: u64,
    pub grant_capacity: u32,
    pub flow_entries: u64,
    pub caller: String,
    pub caller_is_admin: bool,
    pub caller_is_approver: bool,
}

/// Formats seconds as a short human duration: 45s, 30m, 2h5m, 1d3h.
pub fn human_secs(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if d > 0 {
        out.push_str(&format!("{d}d"));
    }
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 && d == 0 {
        out.push_str(&format!("{m}m"));
    }
    if (s > 0 && d == 0 && h == 0) || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::human_secs;

    #[test]
    fn human_durations() {
        assert_eq!(human_secs(0), "0s");
        assert_eq!(human_secs(45), "45s");
        assert_eq!(human_secs(1800), "30m");
        assert_eq!(human_secs(7500), "2h5m");
        assert_eq!(human_secs(90061), "1d1h");
        assert_eq!(human_secs(61), "1m1s");
    }
}
