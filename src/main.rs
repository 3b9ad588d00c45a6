//! The `switchyard` command: run the proxy, check a config, ask a running instance
//! whether it is healthy (for Keepalived's `vrrp_script`), or run the demo.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use switchyard::config::Config;

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
    /// Start a throwaway three-node PostgreSQL cluster with Switchyard in front of it.
    Demo {
        /// Run a scripted failover under load, report what clients saw, and exit.
        #[arg(long)]
        drill: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config),
        Command::Check { config } => check(config),
        Command::Health { admin, timeout } => health(&admin, timeout),
        Command::Demo { drill } => switchyard::demo::run(drill),
    }
}

fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn check(path: PathBuf) -> ExitCode {
    match Config::load(&path) {
        Ok(config) => {
            print!("{}", config.to_effective_yaml());
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

fn run(path: PathBuf) -> ExitCode {
    init_logging();
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
        let running = match proxy::start(config).await {
            Ok(running) => running,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal(&running).await;
        tracing::info!("shutting down");
        running.shutdown(Duration::from_secs(10)).await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal(running: &proxy::RunningProxy) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            return running.stopped().await;
        }
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = running.stopped() => {}
    }
}
