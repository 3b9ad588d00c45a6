//! Transaction pooling. Between transactions the client holds no server; when it
//! sends the first message of the next one, the session checks a connection out,
//! relays until the server is idle again (ReadyForQuery 'I', nothing owed, no open
//! extended-protocol batch), and gives it back. While attached, the two directions
//! run concurrently: client messages go through the [`Translator`] (prepared
//! statements), server replies through the [`Ledger`].

use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::ledger::{self, Event, Ledger, Segment};
use super::prepared::{self, StatementDef};
use super::prepared::{ClientStatements, ServerStatements};
use super::relay::RelayEnd;
use super::translate::{complete_message_len, Translator};
use super::{Session, SessionEnd};
use crate::cancel::Registration;
use crate::pool::PooledServer;
use crate::protocol::frame::{FrameError, FrameScanner};
use crate::protocol::messages;
use crate::protocol::startup::split_cstr;

const READ_SIZE: usize = 16 * 1024;

/// How an attached stretch ended.
enum Detach {
    /// The server is idle: back to the pool, wait for the next transaction.
    Released,
    /// The session is over.
    End(RelayEnd),
}

/// Buffers a session reuses from one transaction to the next, so relaying a
/// transaction allocates nothing once they have grown to fit.
#[derive(Default)]
struct Buffers {
    /// Translated client messages on their way to the server.
    upstream: BytesMut,
    /// Server bytes on their way to the client.
    downstream: BytesMut,
    segments: Vec<Segment>,
    events: Vec<Event>,
}

pub(super) async fn run(
    session: &mut Session,
    socket: &mut TcpStream,
    registration: &Registration,
) -> SessionEnd {
    let mut inbox = BytesMut::new();
    let mut buffers = Buffers::default();
    loop {
        match session.wait_for_request(socket, &mut inbox).await {
            Ok(true) => {}
            Ok(false) => return SessionEnd::Relay(RelayEnd::ClientTerminated),
            Err(end) => {
                session.finish(socket, &end).await;
                return SessionEnd::Relay(end);
            }
        }
        if let Some(replies) = answer_without_server(session, &mut inbox) {
            if let Err(e) = socket.write_all(&replies).await {
                return SessionEnd::Relay(RelayEnd::ClientGone(Some(e)));
            }
            continue;
        }
        let mut server = match session.checkout().await {
            Ok(server) => server,
            Err(refusal) => {
                refusal.send(socket).await;
                return SessionEnd::Refused(refusal.error);
            }
        };
        let mut updates = BytesMut::new();
        session.parameter_updates(&server, &mut updates);
        if !updates.is_empty() && socket.write_all(&updates).await.is_err() {
            return SessionEnd::Relay(RelayEnd::ClientGone(None));
        }
        registration.set_target(Some(server.cancel_target()));
        let (detach, ledger) = attach(session, socket, &mut server, &mut inbox, &mut buffers).await;
        registration.set_target(None);
        session.transactions += 1;
        let end = match detach {
            Detach::Released => {
                release(server, &ledger).await;
                continue;
            }
            Detach::End(end) => end,
        };
        if ledger.is_idle()
            && matches!(end, RelayEnd::ClientTerminated | RelayEnd::ClientGone(None))
        {
            release(server, &ledger).await;
        } else {
            drop(server);
        }
        session.finish(socket, &end).await;
        return SessionEnd::Relay(end);
    }
}

/// Returns a server to the pool; one whose settings were changed in ways the proxy
/// does not track is reset first so they cannot leak to the next client.
async fn release(mut server: PooledServer, ledger: &Ledger) {
    if ledger.statements_reset {
        if let Err(e) = server
            .run_internal_query("DEALLOCATE ALL", std::time::Duration::from_secs(5))
            .await
        {
            tracing::warn!(error = %e, "cannot reset prepared statements; closing the server");
            return;
        }
        server.statements.clear();
    }
    if ledger.untracked_settings {
        if let Err(e) = server
            .run_internal_query("RESET ALL", std::time::Duration::from_secs(5))
            .await
        {
            tracing::warn!(error = %e, "cannot reset server settings; closing it");
            return;
        }
        server.applied = Default::default();
    }
    server.release();
}

/// Answers a leading Parse/Close/Sync batch from an idle client without a server,
/// when every Parse is of a statement a server of this pool has prepared before:
/// the client's mapping is all that changes. This spares a checkout, and keeps
/// clients that prepare synchronously while others hold every server (pgbench
/// `-M prepared` with fewer servers than clients) from waiting on each other.
fn answer_without_server(session: &mut Session, inbox: &mut BytesMut) -> Option<BytesMut> {
    let pool = Arc::clone(&session.binding.as_ref()?.pool);
    let max_message = session.ctx.config.client.max_message_size.0 as usize;
    let mut end = 0;
    loop {
        let len = complete_message_len(&inbox[end..], max_message).ok()??;
        let message = &inbox[end..end + len];
        let body = &message[5..];
        let answerable = match message[0] {
            b'P' => match split_cstr(body) {
                Some((name, _)) if !name.is_empty() => {
                    pool.knows_statement(&StatementDef::from_parse_body(body, name.len()))
                }
                _ => false,
            },
            b'C' => matches!(prepared::split_target(body), Some((b'S', name)) if !name.is_empty()),
            b'S' => true,
            _ => false,
        };
        if !answerable {
            return None;
        }
        end += len;
        if message[0] == b'S' {
            break;
        }
    }
    let batch = inbox.split_to(end);
    let mut replies = BytesMut::new();
    let mut offset = 0;
    while offset < batch.len() {
        let len = 1 + u32::from_be_bytes([
            batch[offset + 1],
            batch[offset + 2],
            batch[offset + 3],
            batch[offset + 4],
        ]) as usize;
        let body = &batch[offset + 5..offset + len];
        match batch[offset] {
            b'P' => {
                if let Some((name, _)) = split_cstr(body) {
                    let def = Arc::new(StatementDef::from_parse_body(body, name.len()));
                    session.statements.insert(name, def);
                }
                replies.extend_from_slice(ledger::PARSE_COMPLETE);
            }
            b'C' => {
                if let Some((_, name)) = prepared::split_target(body) {
                    session.statements.remove(name);
                }
                replies.extend_from_slice(ledger::CLOSE_COMPLETE);
            }
            _ => messages::ready_for_query_idle(&mut replies),
        }
        offset += len;
    }
    Some(replies)
}

/// State both directions touch while attached; each holds the lock only between awaits.
struct Shared<'a> {
    ledger: Ledger,
    client: &'a mut ClientStatements,
    server: &'a mut ServerStatements,
}

async fn attach(
    session: &mut Session,
    socket: &mut TcpStream,
    server: &mut PooledServer,
    inbox: &mut BytesMut,
    buffers: &mut Buffers,
) -> (Detach, Ledger) {
    let max_message = session.ctx.config.client.max_message_size.0 as usize;
    let max_prepared = session.ctx.config.pool.max_prepared_statements as usize;
    let pool = Arc::clone(server.pool());
    let connection = &mut **server;
    let shared = Mutex::new(Shared {
        ledger: Ledger::default(),
        client: &mut session.statements,
        server: &mut connection.statements,
    });
    let wake = Notify::new();
    let Buffers {
        upstream: out,
        downstream: buffer,
        segments,
        events,
    } = buffers;
    let (mut client_reader, mut client_writer) = socket.split();
    let (mut server_reader, mut server_writer) = connection.stream.split();
    let upstream = async {
        loop {
            out.clear();
            let translated = {
                let mut guard = lock(&shared);
                let state = &mut *guard;
                Translator {
                    ledger: &mut state.ledger,
                    client: state.client,
                    server: state.server,
                    max_prepared,
                    max_message,
                }
                .run(inbox, out)
            };
            let translated = match translated {
                Ok(t) => t,
                Err(e) => return RelayEnd::ClientProtocol(e),
            };
            wake.notify_one();
            if !out.is_empty() {
                if let Err(e) = server_writer.write_all(out).await {
                    return RelayEnd::ServerGone {
                        error: Some(e),
                        sent_error: false,
                    };
                }
            }
            if translated.terminate {
                return RelayEnd::ClientTerminated;
            }
            if inbox.capacity() - inbox.len() < 1024 {
                inbox.reserve(READ_SIZE);
            }
            match client_reader.read_buf(inbox).await {
                Ok(0) => return RelayEnd::ClientGone(None),
                Ok(_) => {}
                Err(e) => return RelayEnd::ClientGone(Some(e)),
            }
        }
    };
    let downstream = async {
        let mut scanner = FrameScanner::new(u32::MAX as usize, ledger::capture_tags);
        buffer.clear();
        loop {
            if buffer.capacity() < READ_SIZE {
                buffer.reserve(READ_SIZE);
            }
            let read = tokio::select! {
                read = server_reader.read_buf(buffer) => Some(read),
                _ = wake.notified() => None,
            };
            let idle = {
                let mut guard = lock(&shared);
                let state = &mut *guard;
                match read {
                    Some(Ok(0)) => {
                        return Err(RelayEnd::ServerGone {
                            error: None,
                            sent_error: false,
                        })
                    }
                    Some(Err(e)) => {
                        return Err(RelayEnd::ServerGone {
                            error: Some(e),
                            sent_error: false,
                        })
                    }
                    Some(Ok(_)) => {
                        let processed = state.ledger.process(
                            buffer,
                            &mut scanner,
                            state.server,
                            segments,
                            events,
                        );
                        if let Err(e) = processed {
                            return Err(server_protocol_error(e));
                        }
                    }
                    None => state.ledger.flush_synthetic(segments),
                }
                state.ledger.is_idle() && scanner.at_boundary()
            };
            if let Err(e) = write_segments(&mut client_writer, buffer, segments).await {
                return Err(RelayEnd::ClientGone(Some(e)));
            }
            segments.clear();
            buffer.clear();
            if idle {
                return Ok(());
            }
        }
    };
    let detach = tokio::select! {
        end = upstream => Detach::End(end),
        result = downstream => match result {
            Ok(()) => Detach::Released,
            Err(end) => Detach::End(end),
        },
        _ = session.ctx.shutdown.cancelled() => Detach::End(RelayEnd::Shutdown),
    };
    let ledger = match shared.into_inner() {
        Ok(shared) => shared.ledger,
        Err(poisoned) => poisoned.into_inner().ledger,
    };
    apply_events(session, connection, &pool, events.drain(..));
    (detach, ledger)
}

fn lock<'m, 'a>(shared: &'m Mutex<Shared<'a>>) -> std::sync::MutexGuard<'m, Shared<'a>> {
    // Critical sections never await and leave the state consistent: use it even if
    // a panic elsewhere poisoned the lock.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

fn server_protocol_error(e: FrameError) -> RelayEnd {
    tracing::error!(error = %e, "server sent an invalid message length");
    RelayEnd::ServerGone {
        error: None,
        sent_error: false,
    }
}

/// Applies what the server said while attached: reported parameters and tracked
/// SET/RESET statements that succeeded.
fn apply_events(
    session: &mut Session,
    connection: &mut crate::server::ServerConnection,
    pool: &crate::pool::ServerPool,
    events: impl Iterator<Item = Event>,
) {
    for event in events {
        match event {
            Event::ParameterStatus(body) => {
                session.note_reported(&body);
                if let Ok((name, value)) = crate::protocol::backend::parse_parameter_status(&body) {
                    connection.note_parameter(name, value);
                }
            }
            Event::ParamCommitted(change) => {
                change.apply(&mut session.desired, &session.startup);
                // What the server now has: a RESET returns it to its login value,
                // which the next checkout brings back in line with the client.
                change.apply_to_server(&mut connection.applied);
            }
            Event::Prepared(def) => pool.remember_statement(&def),
        }
    }
}

async fn write_segments<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    chunk: &[u8],
    segments: &[Segment],
) -> std::io::Result<()> {
    match segments {
        [] => Ok(()),
        [Segment::Forward(start, end)] => writer.write_all(&chunk[*start..*end]).await,
        _ => {
            let mut out = BytesMut::new();
            for segment in segments {
                match segment {
                    Segment::Forward(start, end) => out.extend_from_slice(&chunk[*start..*end]),
                    Segment::Insert(bytes) => out.extend_from_slice(bytes),
                }
            }
            writer.write_all(&out).await
        }
    }
}
