//! Prometheus metrics, built with prometheus-client and served over HTTP.
//! Values read from the kernel (verdict counters, map usage) are refreshed
//! just before each scrape is encoded.

use std::{net::SocketAddr, sync::Arc};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PacketLabels {
    pub verdict: &'static str,
    pub reason: &'static str,
    pub zone: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneLabels {
    pub zone: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    pub packets: Family<PacketLabels, Counter>,
    pub bytes: Family<PacketLabels, Counter>,
    pub active_grants: Gauge,
    pub pending_requests: Gauge,
    pub transitions: Family<OutcomeLabels, Counter>,
    pub denied_attempts: Family<ZoneLabels, Counter>,
    pub denied_suppressed: Counter,
    pub map_capacity: Family<MapLabels, Gauge>,
    pub map_entries: Family<MapLabels, Gauge>,
    pub expiry_lag: Histogram,
    pub policy_reloads: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("jitgate");
        let packets = Family::<PacketLabels, Counter>::default();
        registry.register(
            "packets",
            "Packets seen by the XDP gate, by verdict, reason and zone",
            packets.clone(),
        );
        let bytes = Family::<PacketLabels, Counter>::default();
        registry.register(
            "bytes",
            "Bytes seen by the XDP gate, by verdict, reason and zone",
            bytes.clone(),
        );
        let active_grants = Gauge::default();
        registry.register(
            "active_grants",
            "Grants currently active",
            active_grants.clone(),
        );
        let pending_requests = Gauge::default();
        registry.register(
            "pending_requests",
            "Access requests waiting for approval",
            pending_requests.clone(),
        );
        let transitions = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "grant_transitions",
            "Request and grant state transitions, by outcome",
            transitions.clone(),
        );
        let denied_attempts = Family::<ZoneLabels, Counter>::default();
        registry.register(
            "denied_attempts",
            "Denied attempts to reach protected destinations reported by the kernel, by zone",
            denied_attempts.clone(),
        );
        let denied_suppressed = Counter::default();
        registry.register(
            "denied_events_suppressed",
            "Denied-attempt events the kernel's rate limit did not send to the agent",
            denied_suppressed.clone(),
        );
        let map_capacity = Family::<MapLabels, Gauge>::default();
        registry.register(
            "map_capacity",
            "Capacity of the gate's maps",
            map_capacity.clone(),
        );
        let map_entries = Family::<MapLabels, Gauge>::default();
        registry.register(
            "map_entries",
            "Entries in use in the gate's maps",
            map_entries.clone(),
        );
        let expiry_lag = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "expiry_lag_seconds",
            "Time from a grant's expiry to the deletion of its map entries",
            expiry_lag.clone(),
        );
        let policy_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy reloads, by result",
            policy_reloads.clone(),
        );
        // A gauge fixed at 1 rather than an OpenMetrics info metric:
        // Prometheus' text-format tools (promtool) do not know the info type.
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "Build information, always 1", build);
        Metrics {
            registry,
            packets,
            bytes,
            active_grants,
            pending_requests,
            transitions,
            denied_attempts,
            denied_suppressed,
            map_capacity,
            map_entries,
            expiry_lag,
            policy_reloads,
        }
    }

    /// Sets an absolute value read from the kernel on a counter.
    pub fn set_counter(counter: &Counter, value: u64) {
        counter
            .inner()
            .store(value, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn transition(&self, outcome: &str) {
        self.transitions
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("encoding into a String cannot fail");
        out
    }
}

/// Rewrites prometheus-client's OpenMetrics text into the classic Prometheus
/// text format (0.0.4) for clients that did not ask for OpenMetrics, such as
/// `curl` or `promtool check metrics`: counters' HELP and TYPE lines take
/// the `_total` name of their samples, and OpenMetrics-only lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Something that refreshes kernel-derived metrics before a scrape.
pub trait Refresh: Send + Sync + 'static {
    fn refresh(self: Arc<Self>) -> impl std::future::Future<Output = ()> + Send;
    fn metrics(&self) -> &Metrics;
}

/// Serves `/metrics` until the listener fails.
pub async fn serve<R: Refresh>(addr: SocketAddr, source: Arc<R>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve_on(listener, source).await
}

pub async fn serve_on<R: Refresh>(
    listener: tokio::net::TcpListener,
    source: Arc<R>,
) -> std::io::Result<()> {
    use axum::{
        http::{header, HeaderMap},
        routing::get,
        Router,
    };
    let app = Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let source = source.clone();
            async move {
                source.clone().refresh().await;
                let text = source.metrics().encode();
                let wants_openmetrics = headers
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("application/openmetrics-text"));
                if wants_openmetrics {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                } else {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        to_prometheus_text(&text),
                    )
                }
            }
        }),
    );
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_like_their_samples() {
        let m = Metrics::new();
        m.transition("expired");
        let text = to_prometheus_text(&m.encode());
        assert!(
            text.contains("# TYPE jitgate_grant_transitions_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# HELP jitgate_grant_transitions_total "),
            "{text}"
        );
        assert!(
            text.contains("jitgate_grant_transitions_total{outcome=\"expired\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE jitgate_active_grants gauge"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }
}
