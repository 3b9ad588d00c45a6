//! `GET /metrics`: gauges read from the live state at scrape time (connections,
//! pools, topology, reloads) instead of being maintained on every change, then the
//! recorder's text and the data-path shards.

use std::sync::atomic::Ordering;

use crate::context::ProxyContext;
use crate::topology::PrimaryState;

/// The Prometheus text exposition, or None when metrics are disabled.
pub fn render(ctx: &ProxyContext) -> Option<String> {
    set_gauges(ctx);
    let listeners = ctx.listeners();
    crate::metrics::render(listeners.iter().map(|l| &l.counters.metrics))
}

fn gauge(name: &'static str, labels: &[(&'static str, String)], value: f64) {
    metrics::gauge!(name, labels).set(value);
}

fn set_gauges(ctx: &ProxyContext) {
    for listener in ctx.listeners().iter() {
        let counters = &listener.counters;
        let clients = counters.clients.load(Ordering::Relaxed);
        let active = counters.active.load(Ordering::Relaxed);
        let waiting = counters.waiting.load(Ordering::Relaxed);
        let idle = clients.saturating_sub(active + waiting);
        for (state, value) in [("idle", idle), ("active", active), ("waiting", waiting)] {
            gauge(
                "switchyard_client_connections",
                &[
                    ("listener", listener.config.name.clone()),
                    ("state", state.to_string()),
                ],
                value as f64,
            );
        }
    }
    gauge("switchyard_held_clients", &[], ctx.held_clients() as f64);
    gauge(
        "switchyard_unauthenticated_clients",
        &[],
        ctx.admission().logging_in() as f64,
    );
    gauge(
        "switchyard_client_buffered_bytes",
        &[],
        ctx.client_buffers().used() as f64,
    );
    for pool in ctx.pools().stats() {
        let labels = |extra: Option<&str>| {
            let mut labels = vec![
                ("node", pool.node.clone()),
                ("database", pool.database.clone()),
                ("user", pool.user.clone()),
            ];
            if let Some(state) = extra {
                labels.push(("state", state.to_string()));
            }
            labels
        };
        gauge(
            "switchyard_server_connections",
            &labels(Some("idle")),
            pool.idle as f64,
        );
        gauge(
            "switchyard_server_connections",
            &labels(Some("active")),
            pool.in_use as f64,
        );
        gauge("switchyard_pool_size", &labels(None), pool.size as f64);
        gauge(
            "switchyard_pool_waiting_clients",
            &labels(None),
            pool.waiting as f64,
        );
    }
    let topology = ctx.topology().load();
    for node in &topology.nodes {
        let role = node.role();
        for candidate in ["primary", "replica", "unavailable"] {
            gauge(
                "switchyard_node_role",
                &[("node", node.name.clone()), ("role", candidate.to_string())],
                f64::from(u8::from(role == candidate)),
            );
        }
    }
    for node in &topology.nodes {
        if let Some(lag) = node.lag_bytes {
            gauge(
                "switchyard_replica_lag_bytes",
                &[("node", node.name.clone())],
                lag as f64,
            );
        }
    }
    gauge(
        "switchyard_primary_available",
        &[],
        f64::from(u8::from(topology.primary_node().is_some())),
    );
    gauge(
        "switchyard_split_brain",
        &[],
        f64::from(u8::from(matches!(
            topology.primary,
            PrimaryState::SplitBrain { .. }
        ))),
    );
    gauge(
        "switchyard_config_last_reload_successful",
        &[],
        f64::from(u8::from(ctx.reload_status().last_succeeded())),
    );
    gauge(
        "switchyard_shutting_down",
        &[],
        f64::from(u8::from(ctx.draining().is_cancelled())),
    );
    gauge(
        "switchyard_build_info",
        &[("version", env!("CARGO_PKG_VERSION").to_string())],
        1.0,
    );
}
