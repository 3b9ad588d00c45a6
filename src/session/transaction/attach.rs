//! One attached stretch of a transaction-mode session: a client and a checked-out
//! server relayed both ways until the server is idle again. The two directions run
//! concurrently: [`upstream`] moves client messages through the [`Translator`]
//! (prepared statements) to the server, [`downstream`] moves server replies through
//! the [`Ledger`] to the client. What both touch lives in [`Shared`], locked only
//! between awaits.

use std::sync::Mutex;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::resend::{self, Verdict};
use super::{Buffers, Detach, READ_SIZE};
use crate::pool::PooledServer;
use crate::protocol::frame::{complete_prefix, FrameError, FrameScanner};
use crate::server::statements::ServerStatements;
use crate::session::ledger::{Event, Ledger, Segment};
use crate::session::relay::RelayEnd;
use crate::session::statements::ClientStatements;
use crate::session::timeouts::{self, Timeouts};
use crate::session::translate::Translator;
use crate::session::Session;

/// State both directions touch while attached; each holds the lock only between awaits.
struct Shared<'a> {
    ledger: &'a mut Ledger,
    /// Nothing has reached the client in this attach yet.
    replayable: bool,
    client: &'a mut ClientStatements,
    server: &'a mut ServerStatements,
}

fn lock<'m, 'a>(shared: &'m Mutex<Shared<'a>>) -> std::sync::MutexGuard<'m, Shared<'a>> {
    // Critical sections never await and leave the state consistent: use it even if
    // a panic elsewhere poisoned the lock.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// Bytes and queries the client sent in this attach.
#[derive(Default)]
struct Received {
    bytes: u64,
    queries: u64,
}

/// Limits the client's messages are held to.
#[derive(Clone, Copy)]
struct Limits {
    max_message: usize,
    max_prepared: usize,
    timeouts: Timeouts,
}

pub(super) async fn attach(
    session: &mut Session,
    socket: &mut TcpStream,
    server: &mut PooledServer,
    inbox: &mut BytesMut,
    buffers: &mut Buffers,
) -> Detach {
    let limits = Limits {
        max_message: session.env.config.client.max_message_size.0 as usize,
        max_prepared: session.env.config.pool.max_prepared_statements as usize,
        timeouts: Timeouts::from_config(&session.env.config),
    };
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
    let mut received = Received::default();
    let mut sent = 0u64;
    let (client_reader, client_writer) = socket.split();
    let (server_reader, server_writer) = connection.stream.split();
    let detach = tokio::select! {
        biased;
        end = upstream(
            &shared, &wake, limits, inbox, out, replay, &mut received, client_reader, server_writer,
        ) => Detach::End(end),
        result = downstream(
            &shared, &wake, limits.timeouts, buffer, scanner, segments, events, &mut sent, server_reader, client_writer,
        ) => match result {
            Ok(()) => Detach::Released,
            Err(detach) => detach,
        },
        _ = session.signals.shutdown.fired() => Detach::End(RelayEnd::Shutdown),
    };
    let _ = shared.into_inner();
    let counters = &mut session.counters;
    counters.stats.client_bytes += received.bytes;
    counters.stats.server_bytes += sent;
    let metrics = &session.env.listener.counters.metrics;
    metrics.add_received_bytes(received.bytes);
    metrics.add_sent_bytes(sent);
    metrics.add_queries(received.queries);
    apply_events(session, connection, pool, events.drain(..));
    detach
}

/// Client to server: translate every complete message, keep a copy while the
/// request may still be sent again, write, read more.
#[allow(clippy::too_many_arguments)]
async fn upstream(
    shared: &Mutex<Shared<'_>>,
    wake: &Notify,
    limits: Limits,
    inbox: &mut BytesMut,
    out: &mut BytesMut,
    replay: &mut BytesMut,
    received: &mut Received,
    mut client_reader: ReadHalf<'_>,
    mut server_writer: WriteHalf<'_>,
) -> RelayEnd {
    loop {
        out.clear();
        let (translated, owes_now) = {
            let mut guard = lock(shared);
            let state = &mut *guard;
            if state.replayable {
                replay.extend_from_slice(&inbox[..complete_prefix(inbox, limits.max_message)]);
            }
            let translated = Translator {
                ledger: state.ledger,
                client: state.client,
                server: state.server,
                max_prepared: limits.max_prepared,
                max_message: limits.max_message,
            }
            .run(inbox, out);
            (translated, state.ledger.owes_synthetic_now())
        };
        let translated = match translated {
            Ok(t) => t,
            Err(e) => return RelayEnd::ClientProtocol(e),
        };
        received.bytes += translated.bytes;
        received.queries += translated.queries;
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
        let idle = || timeouts::ledger_idle_in_transaction(lock(shared).ledger);
        match limits
            .timeouts
            .client_read(client_reader.read_buf(inbox), idle)
            .await
        {
            Ok(0) => return RelayEnd::ClientGone(None),
            Ok(_) => {}
            Err(e) => return RelayEnd::ClientGone(Some(e)),
        }
    }
}

/// Server to client: read, let the ledger decide what passes (and what the proxy
/// answers itself), write; Ok when the server is idle and owes nothing.
#[allow(clippy::too_many_arguments)]
async fn downstream(
    shared: &Mutex<Shared<'_>>,
    wake: &Notify,
    time_limits: Timeouts,
    buffer: &mut BytesMut,
    scanner: &mut FrameScanner,
    segments: &mut Vec<Segment>,
    events: &mut Vec<Event>,
    sent: &mut u64,
    mut server_reader: ReadHalf<'_>,
    mut client_writer: WriteHalf<'_>,
) -> Result<(), Detach> {
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
            read = time_limits.server_read(server_reader.read_buf(buffer), || timeouts::ledger_owed(lock(shared).ledger)) => Some(read),
            _ = woken.as_mut() => {
                woken.set(wake.notified());
                None
            }
        };
        let idle = {
            let mut guard = lock(shared);
            let state = &mut *guard;
            match read {
                Some(Ok(0)) => {
                    return Err(Detach::End(RelayEnd::ServerGone {
                        error: None,
                        sent_error: false,
                    }))
                }
                Some(Err(e))
                    if resend::reset_before_reply(state.replayable, state.ledger.requests, &e) =>
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
                        resend::going_away(buffer)
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
            Ok(written) => *sent += written as u64,
            Err(e) => return Err(Detach::End(RelayEnd::ClientGone(Some(e)))),
        }
        segments.clear();
        buffer.clear();
        if idle {
            return Ok(());
        }
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
                session.params.note_reported(&body);
                if let Ok((name, value)) = crate::protocol::backend::parse_parameter_status(&body) {
                    connection.note_parameter(name, value);
                }
            }
            Event::ParamCommitted(change) => {
                session.params.apply(&change);
                // What the server now has: a RESET returns it to its login value,
                // which the next checkout brings back in line with the client.
                change.apply_to_server(&mut connection.applied);
            }
            Event::Prepared(def) => pool.remember_statement(&def),
            Event::Error(code) => {
                crate::metrics::record_error(&session.env.listener.config.name, &code)
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
