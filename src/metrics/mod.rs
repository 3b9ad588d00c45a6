//! Recording Prometheus metrics. Rare events (errors, health checks, failovers,
//! reloads, cancels) go through the `metrics` crate and its Prometheus exporter. The
//! per-transaction figures live in [`data_path`]'s per-thread shards, summed at
//! scrape time. Reading the live state into gauges at scrape time, and serving
//! `GET /metrics`, is the admin server's (`admin::gauges`).

mod data_path;

pub use data_path::{ListenerMetrics, Totals};

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

/// Bucket bounds for every `_seconds` histogram: sub-millisecond relays up to
/// failovers lasting tens of seconds.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once. Several proxies in one process (tests)
/// share it.
pub fn install() {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            // Label sets that stop being set (a removed node, pool or listener)
            // leave the output instead of showing their last value forever.
            .idle_timeout(MetricKindMask::GAUGE, Some(Duration::from_secs(120)))
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS);
        let builder = match builder {
            Ok(builder) => builder,
            Err(e) => {
                tracing::error!(error = %e, "metrics: invalid histogram buckets; metrics disabled");
                return None;
            }
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        match metrics::set_global_recorder(recorder) {
            Ok(()) => Some(handle),
            Err(e) => {
                tracing::error!(error = %e, "metrics: cannot install the recorder; metrics disabled");
                None
            }
        }
    });
}

/// Drains histogram samples into their buckets now and then, so memory stays
/// bounded when nobody scrapes.
pub async fn upkeep(shutdown: tokio_util::sync::CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if let Some(Some(handle)) = HANDLE.get() {
            handle.run_upkeep();
        }
    }
}

/// Counts an ErrorResponse sent to a client (from a server or from the proxy) by
/// its SQLSTATE class. Errors are rare, so the lookup by labels is fine here.
pub fn record_error(listener: &str, sqlstate: &str) {
    let class: String = sqlstate.chars().take(2).collect();
    if class.len() == 2 {
        metrics::counter!("switchyard_errors_total", "listener" => listener.to_string(), "class" => class)
            .increment(1);
    }
}

/// Counts a change of primary, and how long writes had none before it.
pub fn record_primary_change(without_primary: Option<Duration>) {
    metrics::counter!("switchyard_primary_changes_total").increment(1);
    if let Some(gap) = without_primary {
        metrics::histogram!("switchyard_failover_duration_seconds").record(gap.as_secs_f64());
    }
}

/// One health check of one node.
pub fn record_health_check(node: &str, took: Duration, failed: bool) {
    metrics::histogram!("switchyard_health_check_duration_seconds", "node" => node.to_string())
        .record(took.as_secs_f64());
    let failures =
        metrics::counter!("switchyard_health_check_failures_total", "node" => node.to_string());
    // Registered at zero so rate() works before the first failure.
    failures.increment(u64::from(failed));
}

/// The Prometheus text exposition, or None when metrics are disabled: what the
/// recorder holds (set scrape-time gauges first) and the data-path shards of
/// `listeners`.
pub fn render<'a>(listeners: impl Iterator<Item = &'a ListenerMetrics> + Clone) -> Option<String> {
    let handle = HANDLE.get()?.as_ref()?;
    let mut text = handle.render();
    data_path::render(listeners, &mut text);
    Some(text)
}
