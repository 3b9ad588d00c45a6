//! `switchyard-demo [--drill]`: a throwaway three-node PostgreSQL cluster (a primary
//! and two streaming replicas, [`cluster`], from the machine's own binaries,
//! [`postgres`]) with Switchyard running in-process in front of it, using SQL-probe
//! discovery. Without `--drill` it prints connection strings and a live table
//! ([`table`]) until Ctrl-C; with `--drill` it runs a workload through a failover
//! ([`drill`]) and prints what the clients saw ([`report`]). Either way it stops
//! PostgreSQL and removes its files at the end, also on errors and signals.
//!
//! A binary of its own beside `switchyard`: it drives the proxy only through the
//! `switchyard` library's public API.

mod cluster;
mod drill;
mod postgres;
mod report;
mod table;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use switchyard::config::Config;
use switchyard::proxy::{self, RunningProxy, StartError};

use cluster::{Cluster, Node, DEMO_DB, DEMO_PASSWORD, DEMO_USER, PROBE_USER};
use table::{ListenerView, Route, View};

#[derive(Parser)]
#[command(
    name = "switchyard-demo",
    version,
    about = "Start a throwaway three-node PostgreSQL cluster with Switchyard in front of it"
)]
struct Cli {
    /// Run a scripted failover under load, report what clients saw, and exit.
    #[arg(long)]
    drill: bool,
}

fn main() -> ExitCode {
    run(Cli::parse().drill)
}

/// The proxy's listeners, in order, and where each sends clients. The proxy's
/// config is written from this ([`proxy_yaml`]), so the table says what it does.
const LISTENERS: [(&str, Route); 2] = [
    ("rw", Route::Primary),
    ("ro", Route::Replica { fallback: true }),
];

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// No usable PostgreSQL installation; the message says what to install.
    #[error("{0}")]
    MissingPostgres(String),
    #[error("{0}")]
    Setup(String),
    #[error("cannot start Switchyard: {0}")]
    Proxy(#[from] StartError),
    #[error("interrupted")]
    Interrupted,
}

/// Runs the demo to its end; the exit code says whether it (or the drill) passed.
fn run(drill: bool) -> ExitCode {
    // The demo's own output is the interface; proxy logs only for real trouble.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("switchyard demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let stop = CancellationToken::new();
        tokio::spawn(stop_on_signal(stop.clone()));
        demo(drill, stop).await
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("switchyard demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels `stop` at the first Ctrl-C or SIGTERM.
async fn stop_on_signal(stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let name = match signal(SignalKind::terminate()) {
        Ok(mut terminate) => tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "Ctrl-C",
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    };
    eprintln!("\nswitchyard demo: {name}: stopping");
    stop.cancel();
}

/// `future`, unless `stop` comes first.
async fn until<T>(
    stop: &CancellationToken,
    future: impl std::future::Future<Output = Result<T, DemoError>>,
) -> Result<T, DemoError> {
    tokio::select! {
        result = future => result,
        _ = stop.cancelled() => Err(DemoError::Interrupted),
    }
}

async fn demo(drill: bool, stop: CancellationToken) -> Result<bool, DemoError> {
    let bin = postgres::find()?;
    let run_as = postgres::RunAs::detect()?;
    let runs_as = if run_as.switches_user() {
        format!(", servers run as the `{}` user", run_as.name)
    } else {
        String::new()
    };
    println!(
        "Switchyard demo: PostgreSQL {} from {}{runs_as}",
        bin.version,
        bin.dir.display()
    );
    let mut cluster = Cluster::new(bin, run_as)?;
    println!("data directory: {}", cluster.base.display());
    let outcome = with_cluster(&mut cluster, drill, &stop).await;
    println!("stopping PostgreSQL (pg_ctl stop -m fast) and removing the data directory");
    let problems = match tokio::task::spawn_blocking(move || cluster.teardown()).await {
        Ok(problems) => problems,
        Err(e) => vec![format!("cleanup failed: {e}")],
    };
    if problems.is_empty() {
        println!("done: no server left running, data directory removed");
    }
    for problem in &problems {
        eprintln!("switchyard demo: {problem}");
    }
    match outcome {
        Ok(_) if !problems.is_empty() => Err(DemoError::Setup("cleanup was incomplete".into())),
        // Ctrl-C is how the live demo ends.
        Err(DemoError::Interrupted) if !drill => Ok(true),
        other => other,
    }
}

async fn with_cluster(
    cluster: &mut Cluster,
    drill: bool,
    stop: &CancellationToken,
) -> Result<bool, DemoError> {
    let say = |step: &str| println!("  {step}");
    until(stop, cluster.build(2, &say)).await?;
    for (i, node) in cluster.nodes.iter().enumerate() {
        let role = if i == 0 {
            "primary".to_string()
        } else {
            format!("replica of {}", cluster.nodes[0].name)
        };
        println!("  {:<6} 127.0.0.1:{:<5}  {role}", node.name, node.port);
    }
    let running = until(stop, start_proxy(cluster)).await?;
    let listeners = listener_views(&running);
    let outcome = if drill {
        println!(
            "Switchyard: rw on {}, ro on {} (SQL-probe discovery)",
            address_of(&listeners, "rw"),
            address_of(&listeners, "ro")
        );
        until(stop, drill::run(cluster, &running, &listeners)).await
    } else {
        let header = connection_help(cluster, &running, &listeners);
        live(&running, &listeners, &header, stop).await
    };
    running.shutdown(Duration::from_secs(5)).await;
    outcome
}

/// Starts the proxy on 127.0.0.1:5000 and :5001, or on ports the system picks when
/// those are taken (also when another program takes them between our check and
/// the proxy's bind).
async fn start_proxy(cluster: &Cluster) -> Result<RunningProxy, DemoError> {
    let (rw, ro) = listen_addresses();
    match proxy::start(demo_config(cluster, rw, ro)?).await {
        Err(StartError::Bind { .. }) if rw.port() != 0 => {
            let any = SocketAddr::from(([127, 0, 0, 1], 0));
            Ok(proxy::start(demo_config(cluster, any, any)?).await?)
        }
        result => Ok(result?),
    }
}

fn demo_config(cluster: &Cluster, rw: SocketAddr, ro: SocketAddr) -> Result<Config, DemoError> {
    let yaml = proxy_yaml(&cluster.nodes, rw, ro, &cluster.probe_password);
    Config::from_yaml_str_with_env(&yaml, &|_| None)
        .map_err(|e| DemoError::Setup(format!("the demo's proxy config: {e}")))
}

/// 127.0.0.1:5000 and :5001 when both are free, else ports the system picks.
fn listen_addresses() -> (SocketAddr, SocketAddr) {
    let preferred = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let (rw, ro) = (preferred(5000), preferred(5001));
    let free = {
        let first = std::net::TcpListener::bind(rw);
        let second = std::net::TcpListener::bind(ro);
        first.is_ok() && second.is_ok()
    };
    if free {
        (rw, ro)
    } else {
        (preferred(0), preferred(0))
    }
}

/// The proxy's configuration for the demo cluster: [`LISTENERS`] on `rw` and `ro`.
fn proxy_yaml(nodes: &[Node], rw: SocketAddr, ro: SocketAddr, probe_password: &str) -> String {
    let mut yaml = String::from("listeners:\n");
    for ((name, route), listen) in LISTENERS.iter().zip([rw, ro]) {
        let route = match route {
            Route::Primary => "route: primary".to_string(),
            Route::Replica { fallback } => {
                let fallback = if *fallback { "primary" } else { "none" };
                format!("route: replica, fallback: {fallback}")
            }
        };
        yaml.push_str(&format!(
            "  - {{ name: {name}, listen: \"{listen}\", {route} }}\n"
        ));
    }
    yaml.push_str(&format!(
        "admin:\n\
         \x20 listen: \"127.0.0.1:0\"\n\
         pool: {{ mode: transaction, size: 10 }}\n\
         failover: {{ hold_timeout: 15s }}\n\
         users:\n\
         \x20 - {{ name: {DEMO_USER}, password: \"{DEMO_PASSWORD}\" }}\n\
         cluster:\n\
         \x20 discovery: sql\n\
         \x20 probe: {{ user: {PROBE_USER}, password: \"{probe_password}\", database: postgres }}\n\
         \x20 health: {{ interval: 500ms, timeout: 1s, rise: 2, fall: 3 }}\n\
         \x20 max_replica_lag: 16MB\n\
         \x20 nodes:\n"
    ));
    for node in nodes {
        yaml.push_str(&format!(
            "    - {{ name: {}, host: 127.0.0.1, port: {} }}\n",
            node.name, node.port
        ));
    }
    yaml
}

/// [`LISTENERS`] with the addresses the proxy bound.
fn listener_views(running: &RunningProxy) -> Vec<ListenerView> {
    LISTENERS
        .iter()
        .filter_map(|&(name, route)| {
            Some(ListenerView {
                name: name.to_string(),
                address: running.listener_addr(name)?,
                route,
            })
        })
        .collect()
}

fn address_of(listeners: &[ListenerView], name: &str) -> String {
    listeners
        .iter()
        .find(|l| l.name == name)
        .map_or_else(|| "?".into(), |l| l.address.to_string())
}

/// What to connect to, and how to try a failover by hand.
fn connection_help(
    cluster: &Cluster,
    running: &RunningProxy,
    listeners: &[ListenerView],
) -> String {
    let uri = |name| {
        format!(
            "postgresql://{DEMO_USER}:{DEMO_PASSWORD}@{}/{DEMO_DB}",
            address_of(listeners, name)
        )
    };
    let pg_ctl = cluster.bin.path("pg_ctl").display().to_string();
    let as_user = if cluster.run_as.switches_user() {
        format!("runuser -u {} -- ", cluster.run_as.name)
    } else {
        String::new()
    };
    let dir = |i: usize| {
        cluster
            .nodes
            .get(i)
            .map_or(String::new(), |n| n.dir.display().to_string())
    };
    format!(
        "Switchyard (SQL-probe discovery) in front of a three-node PostgreSQL cluster:\n\
         \x20 writes (rw, the primary):  psql \"{}\"\n\
         \x20 reads (ro, the replicas):  psql \"{}\"\n\
         \x20 status:                    curl -s http://{}/status\n\
         Try a failover: stop the primary, then promote a replica:\n\
         \x20 {as_user}{pg_ctl} stop -m immediate -D {}\n\
         \x20 {as_user}{pg_ctl} promote -D {}\n",
        uri("rw"),
        uri("ro"),
        running.admin_addr,
        dir(0),
        dir(1)
    )
}

/// The live table, every second, until `stop`.
async fn live(
    running: &RunningProxy,
    listeners: &[ListenerView],
    header: &str,
    stop: &CancellationToken,
) -> Result<bool, DemoError> {
    let terminal = std::io::stdout().is_terminal();
    if !terminal {
        println!("{header}");
    }
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut last = String::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return Ok(true),
            _ = running.stopped() => return Ok(true),
        }
        let view = View::of(&running.context.topology().load());
        let table = table::render(&view, listeners);
        let mut out = std::io::stdout().lock();
        if terminal {
            // Home the cursor and clear the screen, then redraw everything.
            let _ = write!(
                out,
                "\x1b[H\x1b[2J{header}\n{table}\nCtrl-C stops the proxy and PostgreSQL and \
                 removes the data directory.\n"
            );
        } else if table != last {
            let _ = writeln!(out, "{table}");
        }
        let _ = out.flush();
        last = table;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_config_is_valid_and_uses_sql_discovery() {
        let nodes: Vec<Node> = (1..=3)
            .map(|i| Node {
                name: format!("node{i}"),
                port: 40000 + i,
                dir: std::path::PathBuf::from(format!("/tmp/x/node{i}")),
                log: std::path::PathBuf::from(format!("/tmp/x/node{i}.log")),
            })
            .collect();
        let rw = SocketAddr::from(([127, 0, 0, 1], 5000));
        let ro = SocketAddr::from(([127, 0, 0, 1], 0));
        let yaml = proxy_yaml(&nodes, rw, ro, "Secret123");
        // The library accepts it; what it says is checked on the text, so the test
        // needs nothing of the proxy's config types.
        if let Err(e) = Config::from_yaml_str_with_env(&yaml, &|_| None) {
            panic!("{e}\n{yaml}");
        }
        let has = |line: &str| yaml.lines().any(|l| l.trim() == line);
        assert!(
            has(r#"- { name: rw, listen: "127.0.0.1:5000", route: primary }"#),
            "{yaml}"
        );
        assert!(
            has(r#"- { name: ro, listen: "127.0.0.1:0", route: replica, fallback: primary }"#),
            "{yaml}"
        );
        assert!(has("discovery: sql"), "{yaml}");
        assert!(
            has(r#"probe: { user: switchyard_probe, password: "Secret123", database: postgres }"#),
            "{yaml}"
        );
        assert!(has(r#"- { name: demo, password: "demo" }"#), "{yaml}");
        let node_lines = yaml
            .lines()
            .filter(|l| l.contains("host: 127.0.0.1"))
            .count();
        assert_eq!(node_lines, 3, "{yaml}");
        assert!(
            has("- { name: node3, host: 127.0.0.1, port: 40003 }"),
            "{yaml}"
        );
    }
}
