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
use super::relay::RelayEnd;
use super::statements::ClientStatements;
use super::translate::Translator;
use super::{Session, SessionEnd};
use crate::cancel::Registration;
use crate::pool::PooledServer;
use crate::protocol::frame::{complete_message_len, complete_prefix};
use crate::protocol::frame::{FrameError, FrameScanner};
use crate::protocol::frontend;
use crate::protocol::messages;
use crate::protocol::split_cstr;
use crate::server::statements::{ServerStatements, StatementDef};

const READ_SIZE: usize = 16 * 1024;

/// How an attached stretch ended.
enum Detach {
    /// The server is idle: back to the pool, wait for the next transaction.
    Released,
    /// The server's first reply said it is shutting down (57P01) or not accepting
    /// connections (57P03): PostgreSQL holds that interrupt off while committing, so
    /// nothing the client sent took effect, and it is sent again on another server
    /// (after the hold, if the primary is changing). A connection that merely drops
    /// is never retried: the request may have committed.
    Retry,
    /// The session is over.
    End(RelayEnd),
}

/// Buffers a session reuses from one transaction to the next, so relaying a
/// transaction allocates nothing once they have grown to fit.
struct Buffers {
    /// Translated client messages on their way to the server.
    upstream: BytesMut,
    /// Server bytes on their way to the client.
    downstream: BytesMut,
    segments: Vec<Segment>,
    events: Vec<Event>,
    /// Reset at each attach; kept to reuse its queue's allocation.
    ledger: Ledger,
    /// Client messages sent to the server in this attach, kept until the client
    /// has been sent anything (after that a retry could duplicate what it saw).
    replay: BytesMut,
    /// Server message boundaries; its capture buffer (ReadyForQuery, ParameterStatus
    /// bodies) is reused too.
    scanner: FrameScanner,
}

impl Default for Buffers {
    fn default() -> Buffers {
        Buffers {
            upstream: BytesMut::new(),
            downstream: BytesMut::new(),
            segments: Vec::new(),
            events: Vec::new(),
            ledger: Ledger::default(),
            replay: BytesMut::new(),
            scanner: FrameScanner::new(u32::MAX as usize, ledger::capture_tags),
        }
    }
}

/// Retries of one transaction on new servers before the client is told.
const MAX_RETRIES: u32 = 5;

/// `inbox`: what the client already sent (read during authentication).
pub(super) async fn run(
    session: &mut Session,
    socket: &mut TcpStream,
    mut inbox: BytesMut,
    registration: &Registration,
) -> SessionEnd {
    let mut buffers = Buffers::default();
    let mut retries = 0;
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
        let attached_at = session.checked_out_at;
        let detach = attach(session, socket, &mut server, &mut inbox, &mut buffers).await;
        registration.set_target(None);
        session.mark_idle();
        let ledger = &buffers.ledger;
        let end = match detach {
            Detach::Released => {
                session.transactions += 1;
                let metrics = &session.listener.counters.metrics;
                let done = std::time::Instant::now();
                metrics.record_transaction(done.saturating_duration_since(attached_at));
                retries = 0;
                if ledger.unsolicited {
                    drop(server);
                } else if ledger.needs_reset() {
                    reset_and_release(server, ledger).await;
                } else {
                    server.release_at(done);
                }
                continue;
            }
            Detach::Retry if retries < MAX_RETRIES => {
                retries += 1;
                tracing::info!(node = %server.node, attempt = retries, "server went away before answering; sending the request again");
                // Its idle siblings are most likely gone the same way.
                server.pool().drain();
                drop(server);
                let mut again = buffers.replay.split();
                again.extend_from_slice(&inbox);
                inbox = again;
                continue;
            }
            Detach::Retry => RelayEnd::ServerGone {
                error: None,
                sent_error: false,
            },
            Detach::End(end) => end,
        };
        tracing::debug!(client = %session.peer, end = ?end, owes_nothing = ledger.owes_nothing(), "transaction-mode session ends");
        if ledger.is_idle()
            && matches!(end, RelayEnd::ClientTerminated | RelayEnd::ClientGone(None))
        {
            reset_and_release(server, ledger).await;
        } else {
            drop(server);
        }
        session.finish(socket, &end).await;
        return SessionEnd::Relay(end);
    }
}

/// Returns a server to the pool; one whose settings were changed in ways the proxy
/// does not track is reset first so they cannot leak to the next client.
async fn reset_and_release(mut server: PooledServer, ledger: &Ledger) {
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
    // Most requests (a Query, a Bind) cannot be: spare them the pool's shared
    // reference count.
    if !matches!(inbox.first(), Some(b'P' | b'C' | b'S')) {
        return None;
    }
    let pool = Arc::clone(&session.binding.as_ref()?.pool);
    let max_message = session.config.client.max_message_size.0 as usize;
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
            b'C' => matches!(frontend::split_target(body), Some((b'S', name)) if !name.is_empty()),
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
                replies.extend_from_slice(messages::PARSE_COMPLETE);
            }
            b'C' => {
                if let Some((_, name)) = frontend::split_target(body) {
                    session.statements.remove(name);
                }
                replies.extend_from_slice(messages::CLOSE_COMPLETE);
            }
            _ => messages::ready_for_query_idle(&mut replies),
        }
        offset += len;
    }
    Some(replies)
}

/// State both directions touch while attached; each holds the lock only between awaits.
struct Shared<'a> {
    ledger: &'a mut Ledger,
    /// Nothing has reached the client in this attach yet.
    replayable: bool,
    client: &'a mut ClientStatements,
    server: &'a mut ServerStatements,
}

async fn attach(
    session: &mut Session,
    socket: &mut TcpStream,
    server: &mut PooledServer,
    inbox: &mut BytesMut,
    buffers: &mut Buffers,
) -> Detach {
    let max_message = session.config.client.max_message_size.0 as usize;
    let max_prepared = session.config.pool.max_prepared_statements as usize;
    let (pool, connection) = server.parts_mut();
    let Buffers {
        upstream: out,
        downstream: buffer,
        segments,
        events,
        ledger,
        replay,
        scanner,
    } = buffers;
    ledger.reset();
    replay.clear();
    scanner.reset();
    let shared = Mutex::new(Shared {
        ledger,
        replayable: true,
        client: &mut session.statements,
        server: &mut connection.statements,
    });
    let wake = Notify::new();
    let (mut received, mut queries, mut sent) = (0u64, 0u64, 0u64);
    let (mut client_reader, mut client_writer) = socket.split();
    let (mut server_reader, mut server_writer) = connection.stream.split();
    let upstream = async {
        loop {
            out.clear();
            let (translated, owes_now) = {
                let mut guard = lock(&shared);
                let state = &mut *guard;
                if state.replayable {
                    replay.extend_from_slice(&inbox[..complete_prefix(inbox, max_message)]);
                }
                let translated = Translator {
                    ledger: state.ledger,
                    client: state.client,
                    server: state.server,
                    max_prepared,
                    max_message,
                }
                .run(inbox, out);
                (translated, state.ledger.owes_synthetic_now())
            };
            let translated = match translated {
                Ok(t) => t,
                Err(e) => return RelayEnd::ClientProtocol(e),
            };
            received += translated.bytes;
            queries += translated.queries;
            if owes_now {
                // Replies the proxy makes up with nothing before them from the
                // server: the other direction sends them now.
                wake.notify_one();
            }
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
        buffer.clear();
        // One waiter for the whole attach, renewed only after it fires: a fresh one
        // per read would register and unregister with the Notify every time.
        let mut woken = std::pin::pin!(wake.notified());
        loop {
            if buffer.capacity() < READ_SIZE {
                buffer.reserve(READ_SIZE);
            }
            // Biased: a fixed order needs no random number per poll.
            let read = tokio::select! {
                biased;
                read = server_reader.read_buf(buffer) => Some(read),
                _ = woken.as_mut() => {
                    woken.set(wake.notified());
                    None
                }
            };
            let idle = {
                let mut guard = lock(&shared);
                let state = &mut *guard;
                match read {
                    Some(Ok(0)) => {
                        return Err(Detach::End(RelayEnd::ServerGone {
                            error: None,
                            sent_error: false,
                        }))
                    }
                    // A reset before any reply, with a single request sent: the
                    // server closed with that request unread in its socket (which
                    // is what makes the kernel send a reset), so it never ran.
                    Some(Err(e))
                        if state.replayable
                            && state.ledger.requests <= 1
                            && e.kind() == std::io::ErrorKind::ConnectionReset =>
                    {
                        return Err(Detach::Retry)
                    }
                    Some(Err(e)) => {
                        return Err(Detach::End(RelayEnd::ServerGone {
                            error: Some(e),
                            sent_error: false,
                        }))
                    }
                    Some(Ok(_)) => {
                        let verdict = if state.replayable {
                            going_away(buffer)
                        } else {
                            Verdict::Answer
                        };
                        match verdict {
                            Verdict::GoingAway => return Err(Detach::Retry),
                            Verdict::NeedMore => continue,
                            Verdict::Answer => {
                                let processed = state.ledger.process(
                                    buffer,
                                    scanner,
                                    state.server,
                                    segments,
                                    events,
                                );
                                if let Err(e) = processed {
                                    return Err(Detach::End(server_protocol_error(e)));
                                }
                            }
                        }
                    }
                    None => state.ledger.flush_synthetic(segments),
                }
                if !segments.is_empty() {
                    state.replayable = false;
                }
                state.ledger.is_idle() && scanner.at_boundary()
            };
            match write_segments(&mut client_writer, buffer, segments).await {
                Ok(written) => sent += written as u64,
                Err(e) => return Err(Detach::End(RelayEnd::ClientGone(Some(e)))),
            }
            segments.clear();
            buffer.clear();
            if idle {
                return Ok(());
            }
        }
    };
    let detach = tokio::select! {
        biased;
        end = upstream => Detach::End(end),
        result = downstream => match result {
            Ok(()) => Detach::Released,
            Err(detach) => detach,
        },
        _ = session.signals.shutdown.fired() => Detach::End(RelayEnd::Shutdown),
    };
    let _ = shared.into_inner();
    session.stats.client_bytes += received;
    session.stats.server_bytes += sent;
    let metrics = &session.listener.counters.metrics;
    metrics.add_received_bytes(received);
    metrics.add_sent_bytes(sent);
    metrics.add_queries(queries);
    apply_events(session, connection, pool, events.drain(..));
    detach
}

fn lock<'m, 'a>(shared: &'m Mutex<Shared<'a>>) -> std::sync::MutexGuard<'m, Shared<'a>> {
    // Critical sections never await and leave the state consistent: use it even if
    // a panic elsewhere poisoned the lock.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

enum Verdict {
    /// The server is shutting down or cannot serve: nothing ran.
    GoingAway,
    /// An ErrorResponse has started but is not complete yet.
    NeedMore,
    /// A real answer: relay it.
    Answer,
}

/// Judges a server's first bytes in an attach: an ErrorResponse saying the server
/// is shutting down (57P01) or not accepting connections (57P03), with nothing
/// before it but replies that prove no statement finished (ParseComplete,
/// BindComplete, ParameterDescription, RowDescription, NoData), means the request
/// was never executed: a fast shutdown interrupts a prepared INSERT between its
/// BindComplete and its CommandComplete. (57P02, crash shutdown, can follow a
/// commit that reached the WAL, so it is not in this list; and once a
/// CommandComplete or a row has been seen, the request did run.)
fn going_away(buffer: &[u8]) -> Verdict {
    let mut at = 0;
    loop {
        let Some(&tag) = buffer.get(at) else {
            // Only harmless replies so far: wait for what follows them.
            return if at == 0 {
                Verdict::Answer
            } else {
                Verdict::NeedMore
            };
        };
        if !matches!(tag, b'1' | b'2' | b't' | b'T' | b'n' | b'E') {
            return Verdict::Answer;
        }
        let len = match complete_message_len(&buffer[at..], 1 << 20) {
            Ok(Some(len)) => len,
            Ok(None) => return Verdict::NeedMore,
            Err(_) => return Verdict::Answer,
        };
        if tag == b'E' {
            let body = &buffer[at + 5..at + len];
            let fields = crate::protocol::backend::parse_error_fields(body);
            return if matches!(fields.code.as_str(), "57P01" | "57P03") {
                Verdict::GoingAway
            } else {
                Verdict::Answer
            };
        }
        at += len;
    }
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
            Event::Error(code) => {
                crate::metrics::record_error(&session.listener.config.name, &code)
            }
        }
    }
}

/// Writes the segments to the client; returns how many bytes that was.
async fn write_segments<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    chunk: &[u8],
    segments: &[Segment],
) -> std::io::Result<usize> {
    match segments {
        [] => Ok(0),
        [Segment::Forward(start, end)] => {
            writer.write_all(&chunk[*start..*end]).await?;
            Ok(end - start)
        }
        _ => {
            let mut out = BytesMut::new();
            for segment in segments {
                match segment {
                    Segment::Forward(start, end) => out.extend_from_slice(&chunk[*start..*end]),
                    Segment::Insert(bytes) => out.extend_from_slice(bytes),
                }
            }
            writer.write_all(&out).await?;
            Ok(out.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_message as message;

    #[test]
    fn only_a_first_reply_saying_shutdown_counts_as_never_ran() {
        let shutdown = message(b'E', b"SFATAL\0C57P01\0Mterminating connection\0\0");
        assert!(matches!(going_away(&shutdown), Verdict::GoingAway));
        assert!(matches!(going_away(&shutdown[..7]), Verdict::NeedMore));
        let crash = message(b'E', b"SFATAL\0C57P02\0\0");
        assert!(
            matches!(going_away(&crash), Verdict::Answer),
            "a crash may follow a commit"
        );
        let ordinary = message(b'E', b"SERROR\0C23505\0\0");
        assert!(matches!(going_away(&ordinary), Verdict::Answer));
        let rows = message(b'T', b"\0\0");
        assert!(matches!(going_away(&rows), Verdict::NeedMore));
        let done = [rows.clone(), message(b'C', b"SELECT 1\0")].concat();
        assert!(matches!(going_away(&done), Verdict::Answer));
    }

    #[test]
    fn a_shutdown_right_after_bind_complete_still_means_never_ran() {
        let bound = [message(b'1', b""), message(b'2', b"")].concat();
        let shutdown = message(b'E', b"SFATAL\0C57P01\0Mterminating connection\0\0");
        let interrupted = [bound.clone(), shutdown.clone()].concat();
        assert!(matches!(going_away(&interrupted), Verdict::GoingAway));
        assert!(matches!(going_away(&bound), Verdict::NeedMore));
        // Once the statement completed, it may have committed: never resent.
        let completed = [
            bound.clone(),
            message(b'C', b"INSERT 0 1\0"),
            shutdown.clone(),
        ]
        .concat();
        assert!(matches!(going_away(&completed), Verdict::Answer));
        let streamed = [bound, message(b'D', b"\0\0"), shutdown].concat();
        assert!(matches!(going_away(&streamed), Verdict::Answer));
    }
}
