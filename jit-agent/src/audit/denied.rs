//! Summaries of denied attempts for the audit log.
//!
//! The kernel reports every dropped packet to a protected zone through a ring
//! buffer. One audit record per packet would let any scanner flood the log,
//! so attempts are counted per source and target per wall-clock minute, and
//! one summary per pair is written when the minute closes. Memory is bounded
//! too: past [`DeniedAggregator::max_pairs`] distinct pairs in one minute,
//! further attempts only add to an overflow count.
//!
//! Pure logic: the caller passes the time, so tests need no clock.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One denied packet, as the agent decodes it from the ring buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeniedAttempt {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP, 1/58 ICMP).
    pub protocol: u8,
    /// Destination port (0 for protocols without ports).
    pub dst_port: u16,
    /// The protected zone the destination lies in.
    pub zone_id: u32,
}

/// What an attempt was aimed at: a host in a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TargetKey {
    /// The protected zone.
    pub zone_id: u32,
    /// The destination address.
    pub dst: IpAddr,
}

/// A protocol and port seen in a minute, with how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowSeen {
    /// IP protocol number.
    pub protocol: u8,
    /// Destination port.
    pub dst_port: u16,
    /// Attempts with this protocol and port.
    pub count: u64,
}

/// Denied attempts from one source to one target in one minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeniedSummary {
    /// Start of the minute.
    pub minute: DateTime<Utc>,
    /// Source address.
    pub src: IpAddr,
    /// The target.
    #[serde(flatten)]
    pub target: TargetKey,
    /// Attempts in the minute.
    pub count: u64,
    /// First attempt.
    pub first: DateTime<Utc>,
    /// Last attempt.
    pub last: DateTime<Utc>,
    /// Distinct protocol/port pairs, by protocol then port, at most
    /// [`DeniedAggregator::max_flows`] of them.
    pub flows: Vec<FlowSeen>,
    /// Attempts whose protocol/port pair did not fit in `flows`.
    pub other_flows: u64,
}

/// Everything one minute produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeniedMinute {
    /// Start of the minute.
    pub minute: DateTime<Utc>,
    /// One summary per source and target, ordered by source then target.
    pub summaries: Vec<DeniedSummary>,
    /// Attempts from pairs beyond the per-minute limit, not itemized.
    pub overflow_attempts: u64,
}

#[derive(Debug)]
struct PairCounts {
    count: u64,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    flows: BTreeMap<(u8, u16), u64>,
    other_flows: u64,
}

#[derive(Debug)]
struct OpenMinute {
    start: DateTime<Utc>,
    pairs: HashMap<(IpAddr, TargetKey), PairCounts>,
    overflow_attempts: u64,
}

/// Counts denied attempts per source and target per minute.
#[derive(Debug)]
pub struct DeniedAggregator {
    max_pairs: usize,
    max_flows: usize,
    open: Option<OpenMinute>,
}

impl Default for DeniedAggregator {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_PAIRS, Self::DEFAULT_MAX_FLOWS)
    }
}

impl DeniedAggregator {
    /// Distinct source/target pairs kept per minute by default. A spoofed
    /// flood can make up any number of sources; this bounds memory and the
    /// records written per minute.
    pub const DEFAULT_MAX_PAIRS: usize = 4096;
    /// Distinct protocol/port pairs kept per summary by default: enough to
    /// recognize a port scan without listing all of it.
    pub const DEFAULT_MAX_FLOWS: usize = 16;

    /// An aggregator with the given limits (each at least 1).
    pub fn new(max_pairs: usize, max_flows: usize) -> Self {
        DeniedAggregator {
            max_pairs: max_pairs.max(1),
            max_flows: max_flows.max(1),
            open: None,
        }
    }

    /// The per-minute limit of source/target pairs.
    pub fn max_pairs(&self) -> usize {
        self.max_pairs
    }

    /// The per-summary limit of protocol/port pairs.
    pub fn max_flows(&self) -> usize {
        self.max_flows
    }

    /// Counts an attempt seen at `at`. Returns the minute it closed, if `at`
    /// lies in another minute than the open one.
    pub fn record(&mut self, attempt: &DeniedAttempt, at: DateTime<Utc>) -> Option<DeniedMinute> {
        let closed = self.flush_due(at);
        let start = minute_start(at);
        let open = self.open.get_or_insert_with(|| OpenMinute {
            start,
            pairs: HashMap::new(),
            overflow_attempts: 0,
        });
        let key = (
            attempt.src,
            TargetKey {
                zone_id: attempt.zone_id,
                dst: attempt.dst,
            },
        );
        let full = open.pairs.len() >= self.max_pairs;
        let pair = match open.pairs.get_mut(&key) {
            Some(pair) => pair,
            None if full => {
                open.overflow_attempts += 1;
                return closed;
            }
            None => open.pairs.entry(key).or_insert(PairCounts {
                count: 0,
                first: at,
                last: at,
                flows: BTreeMap::new(),
                other_flows: 0,
            }),
        };
        pair.count += 1;
        pair.first = pair.first.min(at);
        pair.last = pair.last.max(at);
        let flow = (attempt.protocol, attempt.dst_port);
        if let Some(count) = pair.flows.get_mut(&flow) {
            *count += 1;
        } else if pair.flows.len() < self.max_flows {
            pair.flows.insert(flow, 1);
        } else {
            pair.other_flows += 1;
        }
        closed
    }

    /// Closes the open minute if `now` lies in another one; call it on a
    /// timer so that a quiet minute is still written. A wall clock that
    /// jumps backwards also closes the open minute, early.
    pub fn flush_due(&mut self, now: DateTime<Utc>) -> Option<DeniedMinute> {
        if self.open.as_ref()?.start == minute_start(now) {
            return None;
        }
        self.flush_all()
    }

    /// Closes the open minute whatever the time (at shutdown).
    pub fn flush_all(&mut self) -> Option<DeniedMinute> {
        let open = self.open.take()?;
        let mut summaries: Vec<DeniedSummary> = open
            .pairs
            .into_iter()
            .map(|((src, target), pair)| DeniedSummary {
                minute: open.start,
                src,
                target,
                count: pair.count,
                first: pair.first,
                last: pair.last,
                flows: pair
                    .flows
                    .into_iter()
                    .map(|((protocol, dst_port), count)| FlowSeen {
                        protocol,
                        dst_port,
                        count,
                    })
                    .collect(),
                other_flows: pair.other_flows,
            })
            .collect();
        summaries.sort_by_key(|s| (s.src, s.target));
        Some(DeniedMinute {
            minute: open.start,
            summaries,
            overflow_attempts: open.overflow_attempts,
        })
    }

    /// Whether a minute is open (has attempts not yet flushed).
    pub fn has_pending(&self) -> bool {
        self.open.is_some()
    }
}

/// The start of the wall-clock minute `at` lies in.
fn minute_start(at: DateTime<Utc>) -> DateTime<Utc> {
    let secs = at.timestamp().div_euclid(60) * 60;
    DateTime::from_timestamp(secs, 0).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn attempt(src: [u8; 4], port: u16) -> DeniedAttempt {
        DeniedAttempt {
            src: IpAddr::V4(Ipv4Addr::from(src)),
            dst: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
            protocol: 6,
            dst_port: port,
            zone_id: 1,
        }
    }

    #[test]
    fn attempts_in_one_minute_become_one_summary_per_pair() {
        let mut agg = DeniedAggregator::default();
        assert!(agg
            .record(&attempt([192, 0, 2, 1], 22), t("2026-12-03T10:00:05Z"))
            .is_none());
        assert!(agg
            .record(&attempt([192, 0, 2, 1], 22), t("2026-12-03T10:00:30Z"))
            .is_none());
        assert!(agg
            .record(
                &attempt([192, 0, 2, 1], 5432),
                t("2026-12-03T10:00:59.999Z")
            )
            .is_none());
        assert!(agg
            .record(&attempt([192, 0, 2, 9], 22), t("2026-12-03T10:00:10Z"))
            .is_none());
        assert!(agg.flush_due(t("2026-12-03T10:00:59.999Z")).is_none());

        let minute = agg.flush_due(t("2026-12-03T10:01:00Z")).unwrap();
        assert!(!agg.has_pending());
        assert_eq!(minute.minute, t("2026-12-03T10:00:00Z"));
        assert_eq!(minute.overflow_attempts, 0);
        assert_eq!(minute.summaries.len(), 2);
        let first = &minute.summaries[0];
        assert_eq!(first.src, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(first.count, 3);
        assert_eq!(first.first, t("2026-12-03T10:00:05Z"));
        assert_eq!(first.last, t("2026-12-03T10:00:59.999Z"));
        assert_eq!(
            first.flows,
            vec![
                FlowSeen {
                    protocol: 6,
                    dst_port: 22,
                    count: 2
                },
                FlowSeen {
                    protocol: 6,
                    dst_port: 5432,
                    count: 1
                },
            ]
        );
        assert_eq!(minute.summaries[1].count, 1);
    }

    #[test]
    fn an_attempt_in_the_next_minute_closes_the_previous_one() {
        let mut agg = DeniedAggregator::default();
        agg.record(&attempt([192, 0, 2, 1], 22), t("2026-12-03T10:00:05Z"));
        let closed = agg
            .record(&attempt([192, 0, 2, 1], 22), t("2026-12-03T10:01:02Z"))
            .unwrap();
        assert_eq!(closed.minute, t("2026-12-03T10:00:00Z"));
        assert_eq!(closed.summaries[0].count, 1);
        let next = agg.flush_all().unwrap();
        assert_eq!(next.minute, t("2026-12-03T10:01:00Z"));
        assert_eq!(next.summaries[0].count, 1);
        assert!(agg.flush_all().is_none());
    }

    #[test]
    fn the_same_source_to_different_targets_is_kept_apart() {
        let mut agg = DeniedAggregator::default();
        let at = t("2026-12-03T10:00:00Z");
        let a = attempt([192, 0, 2, 1], 22);
        agg.record(&a, at);
        agg.record(&DeniedAttempt { zone_id: 2, ..a }, at);
        agg.record(
            &DeniedAttempt {
                dst: IpAddr::V6(Ipv6Addr::LOCALHOST),
                ..a
            },
            at,
        );
        assert_eq!(agg.flush_all().unwrap().summaries.len(), 3);
    }

    #[test]
    fn ports_seen_are_capped_and_the_rest_counted() {
        let mut agg = DeniedAggregator::new(10, 3);
        let at = t("2026-12-03T10:00:00Z");
        for port in 1..=10 {
            agg.record(&attempt([192, 0, 2, 1], port), at);
        }
        agg.record(&attempt([192, 0, 2, 1], 2), at);
        let summary = &agg.flush_all().unwrap().summaries[0];
        assert_eq!(summary.count, 11);
        assert_eq!(summary.flows.len(), 3);
        assert_eq!(
            summary.flows[1],
            FlowSeen {
                protocol: 6,
                dst_port: 2,
                count: 2
            }
        );
        assert_eq!(summary.other_flows, 7);
    }

    #[test]
    fn pairs_beyond_the_limit_only_add_to_the_overflow() {
        let mut agg = DeniedAggregator::new(2, 16);
        let at = t("2026-12-03T10:00:00Z");
        for last in 1..=5 {
            agg.record(&attempt([192, 0, 2, last], 22), at);
        }
        // A pair already kept still counts after the limit is reached.
        agg.record(&attempt([192, 0, 2, 1], 22), at);
        let minute = agg.flush_all().unwrap();
        assert_eq!(minute.summaries.len(), 2);
        assert_eq!(minute.summaries[0].count, 2);
        assert_eq!(minute.overflow_attempts, 3);
    }

    #[test]
    fn a_backwards_clock_jump_closes_the_open_minute() {
        let mut agg = DeniedAggregator::default();
        agg.record(&attempt([192, 0, 2, 1], 22), t("2026-12-03T10:05:00Z"));
        let closed = agg
            .record(&attempt([192, 0, 2, 1], 22), t("2026-12-03T09:59:59Z"))
            .unwrap();
        assert_eq!(closed.minute, t("2026-12-03T10:05:00Z"));
        assert_eq!(agg.flush_all().unwrap().minute, t("2026-12-03T09:59:00Z"));
    }

    #[test]
    fn a_summary_serializes_flat_for_the_audit_log() {
        let mut agg = DeniedAggregator::default();
        agg.record(&attempt([192, 0, 2, 1], 22), t("2026-12-03T10:00:01Z"));
        let summary = &agg.flush_all().unwrap().summaries[0];
        let json = serde_json::to_value(summary).unwrap();
        assert_eq!(json["src"], "192.0.2.1");
        assert_eq!(json["dst"], "10.0.0.5");
        assert_eq!(json["zone_id"], 1);
        assert_eq!(json["count"], 1);
        assert_eq!(json["flows"][0]["dst_port"], 22);
        let back: DeniedSummary = serde_json::from_value(json).unwrap();
        assert_eq!(&back, summary);
    }

    #[test]
    fn minutes_start_on_the_minute() {
        assert_eq!(
            minute_start(t("2026-12-03T10:00:59.999Z")),
            t("2026-12-03T10:00:00Z")
        );
        assert_eq!(
            minute_start(t("1969-12-31T23:59:30Z")),
            t("1969-12-31T23:59:00Z")
        );
    }
}
