//! The `switchyard` command: run the proxy, check a config, or ask a running
//! instance whether it is healthy (for Keepalived's `vrrp_script`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use switchyard::config::{Config, LogConfig, LogFormat};

use switchyard::{http_client, proxy};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "PostgreSQL routing proxy for Patroni clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(long, short, default_value = "conf/switchyard.yaml")]
        config: PathBuf,
    },
    /// Validate a config file and print the effective configuration.
    Check {
        #[arg(long, short, default_value = "conf/switchyard.yaml")]
        config: PathBuf,
    },
    /// Exit 0 when the local instance is up and can route writes (for vrrp_script).
    Health {
        /// Address of the instance's admin listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        admin: String,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config),
        Command::Check { config } => check(config),
        Command::Health { admin, timeout } => health(&admin, timeout),
    }
}

/// Logs to stderr (journald and container runtimes collect it), as text or JSON.
/// `RUST_LOG` overrides the configured level.
fn init_logging(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colour codes only for a person at a terminal, never into journald or files.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

fn check(path: PathBuf) -> ExitCode {
    match Config::load(&path) {
        Ok(config) => {
            // The certificate, key and CA files are read as a start would read them.
            if let Err(e) = switchyard::tls::load_for_listeners(&config) {
                eprintln!("{}: TLS: {e}", path.display());
                return ExitCode::FAILURE;
            }
            print!("{}", config.to_effective_yaml());
            for note in switchyard::config::notes(&config) {
                eprintln!("{}: note: {note}", path.display());
            }
            eprintln!("{}: configuration is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

fn health(admin: &str, timeout: Duration) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            println!("CRITICAL: cannot start runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(http_client::get(admin, "/health", timeout));
    match result {
        Ok(response) => {
            let body = String::from_utf8_lossy(&response.body);
            let line = body.lines().next().unwrap_or("").trim();
            if response.status == 200 {
                println!("{line}");
                ExitCode::SUCCESS
            } else {
                println!("UNHEALTHY ({}): {line}", response.status);
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            println!("UNHEALTHY: cannot reach switchyard admin at {admin}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Every client and server connection is a file descriptor; the usual soft limit
/// (1024) would cap the proxy far below `max_client_connections`. The soft limit
/// is raised to the hard one, and what the proxy got is logged.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (limit.current, limit.maximum) else {
        tracing::info!("file descriptor limit: unlimited");
        return;
    };
    // No hard limit: raise to the kernel's per-process cap, fs.nr_open.
    let target = hard.unwrap_or(1 << 20);
    if target <= soft {
        tracing::info!(soft, hard = target, "file descriptor limit");
        return;
    }
    let raised = rustix::process::Rlimit {
        current: Some(target),
        maximum: hard,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(from = soft, to = target, "file descriptor limit raised"),
        Err(e) => tracing::warn!(soft, error = %e, "cannot raise the file descriptor limit"),
    }
}

fn run(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    init_logging(&config.log);
    raise_fd_limit();
    // What `check` notes (an admin API open without a token, ...) is logged too.
    for note in switchyard::config::notes(&config) {
        tracing::warn!("configuration note: {note}");
    }
    // The control plane (accept loops, topology polling, the admin API, reloads,
    // signals) runs here; clients are served by `runtime.workers` threads of their
    // own (switchyard::workers).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let running = match proxy::start_with_source(config, Some(path)).await {
            Ok(running) => running,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = serve_signals(&running).await {
            tracing::error!("cannot listen for signals: {e}");
            running.shutdown(Duration::from_secs(5)).await;
            return ExitCode::FAILURE;
        }
        // The timeout in force now: a reload may have changed it.
        let drain_timeout = running.context.config().shutdown_timeout.0;
        running.drain_and_stop(drain_timeout).await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// Reloads on SIGHUP; returns on SIGTERM, SIGINT or the admin console's SHUTDOWN
/// (a graceful stop follows).
async fn serve_signals(running: &proxy::RunningProxy) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = terminate.recv() => {
                tracing::info!("SIGTERM: shutting down gracefully");
                return Ok(());
            }
            _ = interrupt.recv() => {
                tracing::info!("SIGINT: shutting down gracefully");
                return Ok(());
            }
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                // The reloader logs the outcome.
                let _ = running.reload().await;
            }
            _ = running.context.stop_requested().cancelled() => {
                tracing::info!("SHUTDOWN from the admin console: shutting down gracefully");
                return Ok(());
            }
            _ = running.stopped() => return Ok(()),
        }
    }
}
