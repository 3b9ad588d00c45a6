//! The demo's live view: a plain-text table of the nodes (name, port, role, replay
//! lag, sessions, last error) and of the routes (where each listener sends clients
//! right now), rendered from a topology snapshot. Pure; the caller prints it.

use std::fmt::Write;
use std::net::SocketAddr;

use crate::config::{Fallback, Route};
use crate::topology::Topology;

/// A listener as the table shows it.
#[derive(Debug, Clone)]
pub struct ListenerView {
    pub name: String,
    pub address: SocketAddr,
    pub route: Route,
    pub fallback: Fallback,
}

/// The node table and the route table, one line each, with a header line.
pub fn render(topology: &Topology, sessions: &[u32], listeners: &[ListenerView]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:>6}  {:<12} {:>10} {:>9}  last error",
        "node", "port", "role", "lag", "sessions"
    );
    for (i, node) in topology.nodes.iter().enumerate() {
        let port = node.address.rsplit(':').next().unwrap_or("");
        let lag = node.lag_bytes.map_or_else(|| "-".to_string(), format_bytes);
        let count = sessions.get(i).copied().unwrap_or(0);
        let error = node
            .last_error
            .as_deref()
            .map_or(String::new(), |e| clip(e, 70));
        let line = format!(
            "{:<8} {:>6}  {:<12} {:>10} {:>9}  {error}",
            node.name,
            port,
            node.role(),
            lag,
            count
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out.push('\n');
    let _ = writeln!(out, "{:<8} {:<22} goes to", "route", "listen");
    for listener in listeners {
        let _ = writeln!(
            out,
            "{:<8} {:<22} {}",
            listener.name,
            listener.address.to_string(),
            target(topology, listener.route, listener.fallback)
        );
    }
    out
}

/// Where every listener goes, on one line: `rw -> node2 | ro -> node3`.
pub fn routes_line(topology: &Topology, listeners: &[ListenerView]) -> String {
    listeners
        .iter()
        .map(|l| format!("{} -> {}", l.name, target(topology, l.route, l.fallback)))
        .collect::<Vec<_>>()
        .join(" | ")
}

fn target(topology: &Topology, route: Route, fallback: Fallback) -> String {
    let name = |i: usize| topology.nodes[i].name.clone();
    let primary = topology.primary_node().map(name);
    match route {
        Route::Primary => primary.unwrap_or_else(|| {
            let reason = topology.write_blocker().unwrap_or_default();
            format!("nobody, writes wait ({})", clip(&reason, 70))
        }),
        Route::Replica => {
            let replicas: Vec<String> = topology.replicas().map(name).collect();
            match (replicas.is_empty(), fallback, primary) {
                (false, _, _) => replicas.join(", "),
                (true, Fallback::Primary, Some(primary)) => {
                    format!("{primary} (no healthy replica; fallback to the primary)")
                }
                (true, _, _) => "nobody (no healthy replica)".to_string(),
            }
        }
    }
}

/// Bytes in the largest unit (powers of 1024) that keeps the number at least 1.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// At most `max` characters of `text`, with an ellipsis when cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let kept: String = text.chars().take(max.saturating_sub(1)).collect();
    format!("{kept}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::health::{Check, Refusal};
    use crate::topology::NodeState;

    fn node(name: &str, port: u16, primary: bool, replica: bool, lag: Option<u64>) -> NodeState {
        let mut state = NodeState::unknown(name.into(), format!("127.0.0.1:{port}"), None);
        state.timeline = Some(1);
        state.lag_bytes = lag;
        let check = |yes| {
            if yes {
                Check::Yes
            } else {
                Check::No(Refusal::InRecovery)
            }
        };
        state.primary.observe(&check(primary), 2, 3);
        state.replica.observe(&check(replica), 2, 3);
        state
    }

    fn listeners() -> Vec<ListenerView> {
        let view = |name: &str, port: u16, route| ListenerView {
            name: name.into(),
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            route,
            fallback: Fallback::Primary,
        };
        vec![
            view("rw", 5000, Route::Primary),
            view("ro", 5001, Route::Replica),
        ]
    }

    #[test]
    fn the_table_shows_roles_lag_sessions_and_routes() {
        let healthy = Topology::resolved(vec![
            node("node1", 41001, true, false, None),
            node("node2", 41002, false, true, Some(0)),
            node("node3", 41003, false, true, Some(3 << 20)),
        ]);
        let table = render(&healthy, &[3, 1, 2], &listeners());
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[1].starts_with("node1"), "{table}");
        assert!(
            lines[1].contains("41001") && lines[1].contains("primary"),
            "{table}"
        );
        assert!(
            lines[2].contains("replica") && lines[2].contains("0 B"),
            "{table}"
        );
        assert!(lines[3].contains("3.0 MB"), "{table}");
        assert!(table.contains("127.0.0.1:5000         node1"), "{table}");
        assert!(
            table.contains("127.0.0.1:5001         node2, node3"),
            "{table}"
        );
        assert_eq!(
            routes_line(&healthy, &listeners()),
            "rw -> node1 | ro -> node2, node3"
        );
    }

    #[test]
    fn routes_say_when_nobody_takes_them() {
        let no_replicas = Topology::resolved(vec![
            node("node1", 1, true, false, None),
            node("node2", 2, false, false, None),
        ]);
        assert_eq!(
            routes_line(&no_replicas, &listeners()),
            "rw -> node1 | ro -> node1 (no healthy replica; fallback to the primary)"
        );
        let no_primary = Topology::resolved(vec![node("node2", 2, false, true, None)]);
        let line = routes_line(&no_primary, &listeners());
        assert!(line.starts_with("rw -> nobody, writes wait ("), "{line}");
        assert!(line.ends_with("ro -> node2"), "{line}");
    }

    #[test]
    fn sizes_and_clipping() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1536), "1.5 kB");
        assert_eq!(format_bytes(5 << 30), "5.0 GB");
        assert_eq!(format_bytes(u64::MAX), "16777216.0 TB");
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
    }
}
