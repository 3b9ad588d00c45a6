//! The console's commands that change something: PAUSE/RESUME, RECONNECT, KILL,
//! KILL_CLIENT, WAIT_CLOSE, DISABLE/ENABLE, RELOAD, SHUTDOWN; SUSPEND and SET are
//! refused. Each returns the CommandComplete tag or the error to send.

use std::time::Duration;

use super::parse::{Command, ShutdownMode};
use crate::context::ProxyContext;
use crate::control::{self, PauseScope};
use crate::protocol::{ClientError, SqlState};

/// How often WAIT_CLOSE looks at the pools again.
const WAIT_CLOSE_POLL: Duration = Duration::from_millis(20);

pub(super) async fn run(ctx: &ProxyContext, command: Command) -> Result<&'static str, ClientError> {
    match command {
        Command::Pause(db) => {
            let scope = PauseScope::from_arg(db.as_deref());
            control::pause_and_wait(ctx.pause_gate(), ctx.client_registry(), &scope, None).await;
            tracing::info!(?scope, "paused from the admin console");
            Ok("PAUSE")
        }
        Command::Resume(db) => {
            let scope = PauseScope::from_arg(db.as_deref());
            ctx.pause_gate().resume(&scope).map_err(|e| {
                ClientError::error(
                    SqlState::ObjectNotInPrerequisiteState,
                    format!("cannot resume: {e}"),
                )
            })?;
            tracing::info!(?scope, "resumed from the admin console");
            Ok("RESUME")
        }
        Command::Suspend => Err(ClientError::error(
            SqlState::FeatureNotSupported,
            "SUSPEND is not supported by Switchyard",
        )
        .with_hint(
            "Use PAUSE for maintenance; Switchyard restarts by draining (SHUTDOWN or SIGTERM) \
             with a second instance behind the VIP, not by handing sockets over.",
        )),
        Command::Set => Err(ClientError::error(
            SqlState::FeatureNotSupported,
            "SET is not supported by the Switchyard console",
        )
        .with_hint("Change the YAML configuration and RELOAD.")),
        Command::Reload => match ctx.request_reload().await {
            Ok(_) => Ok("RELOAD"),
            Err(reason) => Err(ClientError::error(
                SqlState::ConfigFileError,
                format!("not reloaded, the running configuration stays: {reason}"),
            )),
        },
        Command::Reconnect(db) => {
            let closed = reconnect(ctx, db.as_deref());
            tracing::info!(
                ?db,
                closed,
                "RECONNECT: idle server connections closed, busy ones close when released"
            );
            Ok("RECONNECT")
        }
        Command::Kill(db) => {
            // PgBouncer's KILL: the database is paused, so new clients wait for RESUME.
            let scope = PauseScope::Database(db.clone());
            ctx.pause_gate().pause(&scope);
            let killed = ctx.client_registry().kill_database(&db);
            reconnect(ctx, Some(&db));
            tracing::info!(database = %crate::log_text::Escaped(&db), killed, "KILL from the admin console");
            Ok("KILL")
        }
        Command::KillClient(id) => kill_client(ctx, &id),
        Command::WaitClose(db) => {
            wait_close(ctx, db.as_deref()).await;
            Ok("WAIT_CLOSE")
        }
        Command::Disable(db) => {
            ctx.pause_gate().set_disabled(&db, true);
            Ok("DISABLE")
        }
        Command::Enable(db) => {
            ctx.pause_gate().set_disabled(&db, false);
            Ok("ENABLE")
        }
        Command::Shutdown(mode) => {
            tracing::info!(?mode, "SHUTDOWN from the admin console: draining");
            // Every mode drains: sessions end at their next transaction boundary
            // and the proxy stops when they are gone or `shutdown_timeout` passes.
            let _: ShutdownMode = mode;
            ctx.stop_requested().cancel();
            Ok("SHUTDOWN")
        }
        Command::Empty | Command::Show(_) => Err(ClientError::error(
            SqlState::Internal,
            "not a command that changes anything",
        )),
    }
}

/// Closes the idle server connections of `db` (all databases: None) and marks
/// those in use to close when released; returns how many closed now.
fn reconnect(ctx: &ProxyContext, db: Option<&str>) -> usize {
    ctx.pools()
        .all()
        .iter()
        .filter(|p| db.is_none_or(|db| p.key.database == db))
        .map(|p| p.drain())
        .sum()
}

/// Waits until every pool of `db` has had no connection in use: the connections
/// a RECONNECT marked have then been released (and closed).
async fn wait_close(ctx: &ProxyContext, db: Option<&str>) {
    let mut pending: Vec<_> = ctx
        .pools()
        .all()
        .into_iter()
        .filter(|p| db.is_none_or(|db| p.key.database == db))
        .collect();
    while !pending.is_empty() {
        pending.retain(|p| p.stats().in_use > 0);
        if !pending.is_empty() {
            tokio::time::sleep(WAIT_CLOSE_POLL).await;
        }
    }
}

fn kill_client(ctx: &ProxyContext, id: &str) -> Result<&'static str, ClientError> {
    let parsed = match id.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => id.parse().ok(),
    };
    let client = parsed.and_then(|id| ctx.client_registry().get(id));
    match client {
        Some(client) => {
            client.kill();
            tracing::info!(client = client.id, addr = %client.info.addr, "KILL_CLIENT from the admin console");
            Ok("KILL_CLIENT")
        }
        None => Err(ClientError::error(
            SqlState::UndefinedObject,
            format!("no client with id {id} (see the id column of SHOW CLIENTS)"),
        )),
    }
}
