//! The demo's live view: a plain-text table of the nodes (name, port, role, replay
//! lag, sessions, last error) and of the routes (where each listener sends clients
//! right now), rendered from a topology snapshot. [`View::of`] is the one place that
//! reads the proxy's snapshot; the rest is pure, and the caller prints it.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use switchyard::topology::Topology;

/// Where a listener sends clients, as the demo configures it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The confirmed primary only.
    Primary,
    /// Healthy replicas; with `fallback`, the primary when there is none.
    Replica { fallback: bool },
}

/// A listener as the table shows it.
#[derive(Debug, Clone)]
pub struct ListenerView {
    pub name: String,
    pub address: SocketAddr,
    pub route: Route,
}

/// One node as the table shows it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub name: String,
    /// `host:port` of its server.
    pub address: String,
    /// `primary`, `replica` or `unavailable`.
    pub role: &'static str,
    pub lag_bytes: Option<u64>,
    pub sessions: u32,
    pub last_error: Option<String>,
}

/// What the table shows of one topology snapshot.
#[derive(Debug, Clone)]
pub struct View {
    pub nodes: Vec<NodeView>,
    /// The confirmed primary (an index into `nodes`), or why writes wait.
    pub primary: Result<usize, String>,
    /// The nodes trusted for reads, as indexes into `nodes`.
    pub replicas: Vec<usize>,
}

impl View {
    pub fn of(topology: &Topology) -> View {
        let nodes = topology
            .nodes
            .iter()
            .map(|node| NodeView {
                name: node.name.clone(),
                address: node.address.clone(),
                role: node.role(),
                lag_bytes: node.lag_bytes,
                sessions: node.sessions.load(Ordering::Relaxed),
                last_error: node.last_error.clone(),
            })
            .collect();
        let primary = topology
            .primary_node()
            .ok_or_else(|| topology.write_blocker().unwrap_or_default());
        View {
            nodes,
            primary,
            replicas: topology.replicas().collect(),
        }
    }

    /// The names of the nodes trusted for reads.
    pub fn replica_names(&self) -> Vec<String> {
        self.replicas
            .iter()
            .map(|&i| self.nodes[i].name.clone())
            .collect()
    }
}

/// The node table and the route table, one line each, with a header line.
pub fn render(view: &View, listeners: &[ListenerView]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:>6}  {:<12} {:>10} {:>9}  last error",
        "node", "port", "role", "lag", "sessions"
    );
    for node in &view.nodes {
        let port = node.address.rsplit(':').next().unwrap_or("");
        let lag = node.lag_bytes.map_or_else(|| "-".to_string(), format_bytes);
        let error = node
            .last_error
            .as_deref()
            .map_or(String::new(), |e| clip(e, 70));
        let line = format!(
            "{:<8} {:>6}  {:<12} {:>10} {:>9}  {error}",
            node.name, port, node.role, lag, node.sessions
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
            target(view, listener.route)
        );
    }
    out
}

/// Where every listener goes, on one line: `rw -> node2 | ro -> node3`.
pub fn routes_line(view: &View, listeners: &[ListenerView]) -> String {
    listeners
        .iter()
        .map(|l| format!("{} -> {}", l.name, target(view, l.route)))
        .collect::<Vec<_>>()
        .join(" | ")
}

fn target(view: &View, route: Route) -> String {
    let name = |i: &usize| view.nodes[*i].name.clone();
    let primary = view.primary.as_ref().map(name);
    match route {
        Route::Primary => {
            primary.unwrap_or_else(|reason| format!("nobody, writes wait ({})", clip(reason, 70)))
        }
        Route::Replica { fallback } => {
            let replicas: Vec<String> = view.replicas.iter().map(name).collect();
            match (replicas.is_empty(), fallback, primary) {
                (false, _, _) => replicas.join(", "),
                (true, true, Ok(primary)) => {
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

    fn node(name: &str, port: u16, role: &'static str, lag: Option<u64>) -> NodeView {
        NodeView {
            name: name.into(),
            address: format!("127.0.0.1:{port}"),
            role,
            lag_bytes: lag,
            sessions: 0,
            last_error: None,
        }
    }

    fn listeners() -> Vec<ListenerView> {
        let view = |name: &str, port: u16, route| ListenerView {
            name: name.into(),
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            route,
        };
        vec![
            view("rw", 5000, Route::Primary),
            view("ro", 5001, Route::Replica { fallback: true }),
        ]
    }

    #[test]
    fn the_table_shows_roles_lag_sessions_and_routes() {
        let mut nodes = vec![
            node("node1", 41001, "primary", None),
            node("node2", 41002, "replica", Some(0)),
            node("node3", 41003, "replica", Some(3 << 20)),
        ];
        for (node, sessions) in nodes.iter_mut().zip([3, 1, 2]) {
            node.sessions = sessions;
        }
        let healthy = View {
            nodes,
            primary: Ok(0),
            replicas: vec![1, 2],
        };
        let table = render(&healthy, &listeners());
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
        assert_eq!(healthy.replica_names(), ["node2", "node3"]);
    }

    #[test]
    fn routes_say_when_nobody_takes_them() {
        let no_replicas = View {
            nodes: vec![
                node("node1", 1, "primary", None),
                node("node2", 2, "unavailable", None),
            ],
            primary: Ok(0),
            replicas: vec![],
        };
        assert_eq!(
            routes_line(&no_replicas, &listeners()),
            "rw -> node1 | ro -> node1 (no healthy replica; fallback to the primary)"
        );
        let mut no_fallback = listeners();
        no_fallback[1].route = Route::Replica { fallback: false };
        assert_eq!(
            routes_line(&no_replicas, &no_fallback),
            "rw -> node1 | ro -> nobody (no healthy replica)"
        );
        let no_primary = View {
            nodes: vec![node("node2", 2, "replica", None)],
            primary: Err("no node confirms the primary role (node2: not primary)".into()),
            replicas: vec![0],
        };
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
