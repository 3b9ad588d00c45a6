//! The PgBouncer-style admin console: a client that logs in to the database
//! `pgbouncer` (or `switchyard`) as one of `admin.console_users` (all commands) or
//! `admin.console_stats_users` (SHOW only), from loopback or
//! `admin.console_allowed_from`, gets a session that answers simple queries itself
//! with PgBouncer 1.18's result shapes ([`table`]): the SHOW commands
//! ([`show_pools`], [`show_stats`], [`show_misc`]) and the control commands
//! ([`commands`]). Nothing here reaches a PostgreSQL server.

mod commands;
mod parse;
mod show_misc;
mod show_pools;
mod show_stats;
mod table;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::tls::ClientStream;
use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use super::handshake::SessionParams;
use crate::config::Cidr;
use crate::context::ProxyContext;
use crate::protocol::frame::complete_message_len;
use crate::protocol::{messages, result_set, tag, ClientError, SqlState};
use parse::{Command, Show};

/// The virtual databases that open the console.
pub(crate) const CONSOLE_DATABASES: [&str; 2] = ["pgbouncer", "switchyard"];

/// Largest console message accepted.
const MAX_MESSAGE: usize = 64 * 1024;

pub(super) fn is_console_database(database: &str) -> bool {
    CONSOLE_DATABASES.contains(&database)
}

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Admin,
    Stats,
}

/// Who may open the console from where; the error to refuse with otherwise.
fn access(ctx: &ProxyContext, user: &str, peer: IpAddr) -> Result<Access, ClientError> {
    let config = ctx.config();
    let admin = &config.admin;
    let access = if admin.console_users.iter().any(|u| u == user) {
        Access::Admin
    } else if admin.console_stats_users.iter().any(|u| u == user) {
        Access::Stats
    } else {
        return Err(ClientError::fatal(
            SqlState::InsufficientPrivilege,
            format!("user \"{user}\" may not use the admin console"),
        )
        .with_hint("List the user in admin.console_users or admin.console_stats_users."));
    };
    let loopback = match peer {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    let allowed = loopback
        || admin
            .console_allowed_from
            .iter()
            .filter_map(|range| Cidr::parse(range).ok())
            .any(|range| range.contains(peer));
    if !allowed {
        return Err(ClientError::fatal(
            SqlState::InvalidAuthorization,
            format!("the admin console is not allowed from {peer}"),
        )
        .with_hint("It is open from loopback and admin.console_allowed_from only."));
    }
    Ok(access)
}

/// Runs a console session for an authenticated client; `greeting` holds
/// AuthenticationOk, `unread` what the client sent after authenticating.
pub(super) async fn serve(
    socket: &mut ClientStream,
    peer: SocketAddr,
    ctx: &Arc<ProxyContext>,
    params: &SessionParams,
    mut greeting: BytesMut,
    unread: BytesMut,
) {
    let access = match access(ctx, &params.user, peer.ip()) {
        Ok(access) => access,
        Err(error) => return super::refuse(socket, &error).await,
    };
    tracing::info!(client = %peer, user = %crate::log_text::Escaped(&params.user), ?access, "admin console session opened");
    for (name, value) in [
        ("server_version", "1.18.0/switchyard"),
        ("client_encoding", "UTF8"),
        ("server_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "GMT"),
        ("standard_conforming_strings", "on"),
        (
            "is_superuser",
            if access == Access::Admin { "on" } else { "off" },
        ),
    ] {
        messages::parameter_status(&mut greeting, name, value);
    }
    messages::backend_key_data(
        &mut greeting,
        rand::random::<i32>() & i32::MAX,
        rand::random(),
    );
    messages::ready_for_query_idle(&mut greeting);
    if super::send_all(socket, &greeting).await.is_err() {
        return;
    }
    let end = run(socket, ctx, access, unread).await;
    tracing::info!(client = %peer, user = %crate::log_text::Escaped(&params.user), "admin console session ended: {end}");
}

/// The query loop; returns why it ended.
async fn run(
    socket: &mut ClientStream,
    ctx: &Arc<ProxyContext>,
    access: Access,
    mut inbox: BytesMut,
) -> String {
    let mut out = BytesMut::with_capacity(4096);
    // After an extended-protocol message: skip to Sync, as PostgreSQL does.
    let mut skipping = false;
    loop {
        loop {
            let len = match complete_message_len(&inbox, MAX_MESSAGE) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => {
                    let error = ClientError::fatal(SqlState::ProtocolViolation, e.to_string());
                    super::refuse(socket, &error).await;
                    return format!("protocol violation: {e}");
                }
            };
            let message = inbox.split_to(len);
            match message[0] {
                tag::TERMINATE => return "client terminated".into(),
                tag::QUERY => {
                    skipping = false;
                    let body = &message[5..];
                    let sql = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body));
                    answer(ctx, access, &sql, &mut out).await;
                    messages::ready_for_query_idle(&mut out);
                }
                tag::SYNC => {
                    skipping = false;
                    messages::ready_for_query_idle(&mut out);
                }
                _ if skipping => {}
                _ => {
                    skipping = true;
                    let error = ClientError::error(
                        SqlState::FeatureNotSupported,
                        "the admin console speaks the simple query protocol only",
                    );
                    out.extend_from_slice(&error.encode());
                }
            }
        }
        if !out.is_empty() {
            if let Err(e) = super::send_all(socket, &out).await {
                return format!("client connection error: {e}");
            }
            out.clear();
        }
        let read = tokio::select! {
            read = socket.read_buf(&mut inbox) => read,
            _ = ctx.shutdown().cancelled() => {
                let error = ClientError::fatal(
                    SqlState::AdminShutdown,
                    "terminating connection because Switchyard is shutting down",
                );
                super::refuse(socket, &error).await;
                return "proxy shutdown".into();
            }
        };
        match read {
            Ok(0) => return "client disconnected".into(),
            Ok(_) => {}
            Err(e) => return format!("client connection error: {e}"),
        }
    }
}

/// Runs one command and writes its reply (without ReadyForQuery) to `out`.
async fn answer(ctx: &ProxyContext, access: Access, sql: &str, out: &mut BytesMut) {
    let command = match parse::parse(sql) {
        Ok(command) => command,
        Err(error) => return out.extend_from_slice(&error.encode()),
    };
    if access == Access::Stats && !command.is_read_only() {
        let error = ClientError::error(
            SqlState::InsufficientPrivilege,
            "admin access needed: this user is in admin.console_stats_users",
        );
        return out.extend_from_slice(&error.encode());
    }
    match command {
        Command::Empty => result_set::empty_query_response(out),
        Command::Show(Show::Help) => show_misc::help(out),
        Command::Show(what) => show(ctx, what).encode(out),
        command => match commands::run(ctx, command).await {
            Ok(tag) => result_set::command_complete(out, tag),
            Err(error) => out.extend_from_slice(&error.encode()),
        },
    }
}

fn show(ctx: &ProxyContext, what: Show) -> table::Table {
    match what {
        Show::Pools => show_pools::pools(ctx),
        Show::Servers => show_pools::servers(ctx),
        Show::Databases => show_pools::databases(ctx),
        Show::Users => show_pools::users(ctx),
        Show::Lists => show_pools::lists(ctx),
        Show::Stats => show_stats::stats(ctx, ctx.started()),
        Show::StatsTotals => show_stats::stats_totals(ctx),
        Show::StatsAverages => show_stats::stats_averages(ctx, ctx.started()),
        Show::Totals => show_stats::totals(ctx, ctx.started()),
        Show::Clients => show_misc::clients(ctx),
        Show::Config => show_misc::config(ctx),
        Show::Mem => show_misc::mem(),
        Show::Version => show_misc::version(),
        Show::State => show_misc::state(ctx),
        Show::Nodes => show_misc::nodes(ctx),
        Show::Routes => show_misc::routes(ctx),
        Show::Help => table::Table::new(&[]),
    }
}
