//! One attached stretch of a transaction-mode session: a client and a checked-out
//! server relayed both ways until the server is idle again. The two directions run
//! concurrently: [`Upstream`] moves client messages through the [`Translator`]
//! (prepared statements) to the server, [`Downstream`] moves server replies through
//! the [`Ledger`] to the client. What both touch lives in [`Shared`], locked only
//! between awaits. While nothing has reached the client the request may still be
//! sent again elsewhere ([`resend`]); server bytes the client waits for are never
//! held back for that: a Flush from the client, or a copy or a held reply past its
//! bound, ends it.

use std::sync::Mutex;

use crate::tls::stream::{ClientReader, ClientWriter};
use crate::tls::ClientStream;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use super::resend::{self, Judge, RequestShape, Verdict, MAX_HELD};
use super::{Buffers, Detach, READ_SIZE};
use crate::buffer_budget::Reservation;
use crate::pool::{PooledServer, ServerPool};
use crate::protocol::frame::{complete_prefix, FrameError, FrameScanner, Messages};
use crate::protocol::tag;
use crate::server::params::ParamSet;
use crate::server::statements::ServerStatements;
use crate::server::stream::{ServerReadHalf, ServerWriteHalf};
use crate::session::client_params::ClientParams;
use crate::session::ledger::{Event, Ledger, Segment};
use crate::session::relay::{self, RelayEnd};
use crate::session::statements::ClientStatements;
use crate::session::timeouts::{self, Timeouts};
use crate::session::translate::{TranslateError, Translator};
use crate::session::{Session, SessionEnv};

/// State both directions touch while attached; each holds the lock only between awaits.
struct Shared<'a> {
    ledger: &'a mut Ledger,
    /// Nothing has reached the client in this attach yet and the copy of its
    /// request is whole: it may be sent again, and the first replies are held
    /// back until they show whether it ran.
    replayable: bool,
    /// The copy of the client's messages in this attach, while replayable.
    replay: &'a mut BytesMut,
    /// What the copy and the held replies take from the proxy-wide budget.
    held: Reservation<'a>,
    /// Client bytes are being written to the server: it must not be released
    /// mid-message even when nothing is owed (CopyData outside COPY, a Flush
    /// owe no reply).
    writing: bool,
    client: &'a mut ClientStatements,
    server: &'a mut ServerStatements,
    /// The client's parameters and what the server has set: settings that hold
    /// are applied as they happen, so a long chain of transactions in one attach
    /// (COMMIT AND CHAIN) piles nothing up.
    params: &'a mut ClientParams,
    applied: &'a mut ParamSet,
}

impl Shared<'_> {
    /// Whether the copied request may run again (judged only when a server
    /// ends before answering, so the hot path never reads the SQL for it).
    fn resendable(&self) -> bool {
        self.replayable && RequestShape::of(self.replay, self.client).resendable()
    }

    /// The request can no longer be sent again: stop keeping anything for it.
    fn stop_replay(&mut self) {
        self.replayable = false;
        self.replay.clear();
        self.held.release_all();
    }
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

/// `resend_allowed`: the run loop allows one more resend of this request.
pub(super) async fn attach(
    session: &mut Session,
    socket: &mut ClientStream,
    server: &mut PooledServer,
    inbox: &mut BytesMut,
    buffers: &mut Buffers,
    resend_allowed: bool,
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
    ledger.reset(session.params.nonstandard_strings());
    replay.clear();
    scanner.reset();
    let env = &session.env;
    let shared = Mutex::new(Shared {
        ledger,
        replayable: resend_allowed,
        replay,
        held: Reservation::new(env.ctx.client_buffers()),
        writing: false,
        client: &mut session.statements,
        server: &mut connection.statements,
        params: &mut session.params,
        applied: &mut connection.applied,
    });
    let wake = Notify::new();
    let (client_reader, client_writer) = socket.split();
    let (server_reader, server_writer) = connection.stream.split();
    let mut upstream = Upstream {
        shared: &shared,
        wake: &wake,
        limits,
        inbox,
        out,
        received: Received::default(),
    };
    let mut downstream = Downstream {
        shared: &shared,
        wake: &wake,
        env,
        pool,
        buffer,
        scanner,
        segments,
        events,
        judge: Judge::default(),
        held: 0,
        sent: 0,
        timeouts: limits.timeouts,
    };
    let detach = {
        // Pinned where they are made: moving the two direction futures into
        // pinned locals would copy them (two memcpy calls, about 320
        // instructions) on every transaction.
        let mut to_server = std::pin::pin!(upstream.run(client_reader, server_writer));
        let mut to_client = std::pin::pin!(downstream.run(server_reader, client_writer));
        tokio::select! {
            biased;
            end = to_server.as_mut() => match end {
                RelayEnd::ServerGone { .. } => {
                    let server_gone = |result: &Result<(), Detach>| {
                        matches!(result, Err(Detach::End(RelayEnd::ServerGone { .. })))
                    };
                    // Boxed: a rare path, kept out of every transaction's future.
                    match Box::pin(relay::after_server_write_failed(to_client, server_gone)).await {
                        Some(Err(detach)) => detach,
                        _ => Detach::End(end),
                    }
                }
                end => Detach::End(end),
            },
            result = to_client.as_mut() => match result {
                Ok(()) => Detach::Released,
                Err(detach) => detach,
            },
            _ = session.signals.shutdown.fired() => Detach::End(RelayEnd::Shutdown),
        }
    };
    let received = std::mem::take(&mut upstream.received);
    let sent = downstream.sent;
    drop(shared);
    let counters = &mut session.counters;
    counters.stats.client_bytes += received.bytes;
    counters.stats.server_bytes += sent;
    let metrics = &session.env.listener.counters.metrics;
    metrics.add_received_bytes(received.bytes);
    metrics.add_sent_bytes(sent);
    metrics.add_queries(received.queries);
    apply_events(session, connection, events.drain(..));
    detach
}

/// Client to server: translate every complete message, keep a copy while the
/// request may still be sent again, write, read more.
struct Upstream<'s, 'a> {
    shared: &'s Mutex<Shared<'a>>,
    wake: &'s Notify,
    limits: Limits,
    inbox: &'s mut BytesMut,
    out: &'s mut BytesMut,
    received: Received,
}

impl Upstream<'_, '_> {
    async fn run(
        &mut self,
        mut client_reader: ClientReader<'_>,
        mut server_writer: ServerWriteHalf<'_>,
    ) -> RelayEnd {
        loop {
            self.out.clear();
            let (translated, wake_now) = {
                let mut guard = lock(self.shared);
                let state = &mut *guard;
                let copied_from = self.keep_copy(state);
                let translated = Translator {
                    ledger: state.ledger,
                    client: state.client,
                    server: state.server,
                    max_prepared: self.limits.max_prepared,
                    max_message: self.limits.max_message,
                }
                .run(self.inbox, self.out);
                let stopped = copied_from.is_some_and(|from| self.note_copy(state, from));
                state.writing = !self.out.is_empty();
                // Replies the proxy makes up with nothing before them from the
                // server, or held replies the client now waits for: the other
                // direction sends them now.
                (translated, stopped || state.ledger.owes_synthetic_now())
            };
            let translated = match translated {
                Ok(t) => t,
                Err(TranslateError::Frame(e)) => return RelayEnd::ClientProtocol(e),
                Err(TranslateError::Statements(over)) => {
                    return RelayEnd::ClientOverLimit(format!(
                        "prepared statements of this connection would take {} bytes, over the \
                         proxy's limit of {} bytes; close (deallocate) statements no longer used",
                        over.bytes,
                        crate::session::statements::MAX_STATEMENT_BYTES
                    ))
                }
            };
            self.received.bytes += translated.bytes;
            self.received.queries += translated.queries;
            if wake_now {
                self.wake.notify_one();
            }
            if !self.out.is_empty() {
                if let Err(e) = server_writer.send(self.out).await {
                    return RelayEnd::ServerGone {
                        error: Some(e),
                        sent_error: false,
                    };
                }
                let mut state = lock(self.shared);
                state.writing = false;
                if state.ledger.is_idle() {
                    // The other direction may have found nothing owed meanwhile and
                    // waited only for this write to finish.
                    self.wake.notify_one();
                }
            }
            if translated.terminate {
                return RelayEnd::ClientTerminated;
            }
            if self.inbox.capacity() - self.inbox.len() < 1024 {
                self.inbox.reserve(READ_SIZE);
            }
            let shared = self.shared;
            let idle = || timeouts::ledger_idle_in_transaction(lock(shared).ledger);
            let read = client_reader.read_buf(self.inbox);
            match self.limits.timeouts.client_read(read, idle).await {
                Ok(0) => return RelayEnd::ClientGone(None),
                Ok(_) => {}
                Err(e) => return RelayEnd::ClientGone(Some(e)),
            }
        }
    }

    /// Copies the complete messages about to be translated, while the request may
    /// be sent again and the copy stays within its bounds; where the copy starts.
    fn keep_copy(&mut self, state: &mut Shared<'_>) -> Option<usize> {
        if !state.replayable {
            return None;
        }
        let complete = complete_prefix(self.inbox, self.limits.max_message);
        let from = state.replay.len();
        if from + complete > MAX_HELD || !state.held.grow(complete) {
            state.stop_replay();
            // Anything held back must go now.
            self.wake.notify_one();
            return None;
        }
        state.replay.extend_from_slice(&self.inbox[..complete]);
        Some(from)
    }

    /// True when a Flush among the messages just copied ended the replay: the
    /// client waits for the replies so far. Only the message types are read.
    fn note_copy(&mut self, state: &mut Shared<'_>, from: usize) -> bool {
        let flushed = Messages::new(&state.replay[from..], usize::MAX)
            .any(|message| message.tag == tag::FLUSH);
        if flushed {
            state.stop_replay();
        }
        flushed
    }
}

/// What the downstream direction does after a read.
enum Step {
    /// Send the segments, read more.
    Relay,
    /// Hold the bytes back: they do not show yet whether the request ran.
    Hold,
    /// The server said it is shutting down before running the request: find out
    /// whether the node is leaving.
    Suspect,
}

/// Server to client: read, let the ledger decide what passes (and what the proxy
/// answers itself), write; Ok when the server is idle and owes nothing.
struct Downstream<'s, 'a> {
    shared: &'s Mutex<Shared<'a>>,
    wake: &'s Notify,
    env: &'s SessionEnv,
    pool: &'s ServerPool,
    buffer: &'s mut BytesMut,
    scanner: &'s mut FrameScanner,
    segments: &'s mut Vec<Segment>,
    events: &'s mut Vec<Event>,
    judge: Judge,
    /// Bytes of `buffer` taken from the budget while held.
    held: usize,
    sent: u64,
    timeouts: Timeouts,
}

impl Downstream<'_, '_> {
    async fn run(
        &mut self,
        mut server_reader: ServerReadHalf<'_>,
        mut client_writer: ClientWriter<'_>,
    ) -> Result<(), Detach> {
        self.buffer.clear();
        // One waiter for the whole attach, renewed only after it fires: a fresh one
        // per read would register and unregister with the Notify every time.
        let mut woken = std::pin::pin!(self.wake.notified());
        loop {
            if self.buffer.capacity() - self.buffer.len() < 1024 {
                self.buffer.reserve(READ_SIZE);
            }
            // Biased: a fixed order needs no random number per poll.
            let shared = self.shared;
            let owed = || timeouts::ledger_owed(lock(shared).ledger);
            let read = tokio::select! {
                biased;
                read = self.timeouts.server_read(server_reader.read_buf(self.buffer), owed) => Some(read),
                _ = woken.as_mut() => {
                    woken.set(self.wake.notified());
                    None
                }
            };
            let mut step = self.after_read(read)?;
            if let Step::Suspect = step {
                step = self.suspect().await?;
            }
            if let Step::Hold = step {
                continue;
            }
            let idle = {
                let state = lock(self.shared);
                state.ledger.is_idle() && self.scanner.at_boundary() && !state.writing
            };
            match write_segments(&mut client_writer, self.buffer, self.segments).await {
                Ok(written) => self.sent += written as u64,
                Err(e) => return Err(Detach::End(RelayEnd::ClientGone(Some(e)))),
            }
            self.segments.clear();
            self.buffer.clear();
            if idle {
                return Ok(());
            }
        }
    }

    /// Decides what a read (None: a wake from the other direction) means.
    fn after_read(&mut self, read: Option<std::io::Result<usize>>) -> Result<Step, Detach> {
        let mut guard = lock(self.shared);
        let state = &mut *guard;
        match read {
            Some(Ok(0)) => {
                return Err(Detach::End(RelayEnd::ServerGone {
                    error: None,
                    sent_error: state.ledger.last_was_error,
                }))
            }
            Some(Err(e))
                if resend::reset_before_reply(state.ledger.requests, &e) && state.resendable() =>
            {
                return Ok(Step::Suspect)
            }
            Some(Err(e)) => {
                return Err(Detach::End(RelayEnd::ServerGone {
                    error: Some(e),
                    sent_error: false,
                }))
            }
            Some(Ok(_)) => {}
            None => {
                // Replies the proxy owes with nothing from the server before them.
                state.ledger.flush_synthetic(self.segments);
                if !self.segments.is_empty() {
                    state.stop_replay();
                }
            }
        }
        if state.replayable && !self.buffer.is_empty() {
            match self.judge.judge(self.buffer) {
                Verdict::GoingAway if state.resendable() => return Ok(Step::Suspect),
                Verdict::NeedMore if self.hold(state) => return Ok(Step::Hold),
                Verdict::GoingAway | Verdict::NeedMore | Verdict::Answer => {}
            }
        }
        self.relay(state)?;
        Ok(Step::Relay)
    }

    /// Keeps the bytes read so far back, within the bounds; false when they must go.
    fn hold(&mut self, state: &mut Shared<'_>) -> bool {
        let more = self.buffer.len().saturating_sub(self.held);
        if self.buffer.len() <= MAX_HELD && state.held.grow(more) {
            self.held = self.buffer.len();
            return true;
        }
        false
    }

    /// Passes the buffer through the ledger into segments for the client.
    fn relay(&mut self, state: &mut Shared<'_>) -> Result<(), Detach> {
        if !self.buffer.is_empty() {
            state
                .ledger
                .process(
                    self.buffer,
                    self.scanner,
                    state.server,
                    self.segments,
                    self.events,
                )
                .map_err(|e| Detach::End(server_protocol_error(e)))?;
            if !self.events.is_empty() {
                self.apply_now(state);
            }
        }
        if state.replayable && !self.segments.is_empty() {
            state.stop_replay();
        }
        self.held = 0;
        self.judge = Judge::default();
        Ok(())
    }

    /// Applies the events that need nothing but what this direction holds, as they
    /// happen: a client pipelining thousands of requests in one attach must not
    /// pile them up (a rejected statement is forgotten at once, a setting that
    /// holds is applied). ParameterStatus waits for the end of the attach, only the
    /// latest per parameter.
    fn apply_now(&mut self, state: &mut Shared<'_>) {
        let listener = &self.env.listener.config.name;
        let pool = self.pool;
        self.events.retain(|event| match event {
            Event::PrepareFailed(def) => {
                state.client.forget(def);
                false
            }
            Event::Prepared(def) => {
                pool.remember_statement(def);
                false
            }
            Event::Error(code) => {
                crate::metrics::record_error(listener, code);
                false
            }
            Event::ParamCommitted(change) => {
                state.params.apply(change);
                // What the server now has: a RESET returns it to its login value,
                // which the next checkout brings back in line with the client.
                change.apply_to_server(state.applied);
                false
            }
            Event::ParameterStatus(_) => true,
        });
        keep_latest_parameter_status(self.events);
    }

    /// The server ended before running the request: resend it if the node is
    /// really leaving, otherwise the client gets the server's own error.
    async fn suspect(&mut self) -> Result<Step, Detach> {
        let leaving = resend::node_is_leaving(self.env, self.pool).await;
        let mut guard = lock(self.shared);
        let state = &mut *guard;
        if leaving && state.resendable() {
            return Err(Detach::Retry);
        }
        state.stop_replay();
        self.relay(state)?;
        Ok(Step::Relay)
    }
}

fn server_protocol_error(e: FrameError) -> RelayEnd {
    tracing::error!(error = %e, "server sent an invalid message length");
    RelayEnd::ServerGone {
        error: None,
        sent_error: false,
    }
}

/// Drops every ParameterStatus event followed by a later one for the same
/// parameter (PostgreSQL reports a bounded set of parameters, so this keeps the
/// list bounded however long the attach).
fn keep_latest_parameter_status(events: &mut Vec<Event>) {
    fn name(body: &[u8]) -> &[u8] {
        body.split(|&b| b == 0).next().unwrap_or_default()
    }
    let mut at = 0;
    while at < events.len() {
        let later = match &events[at] {
            Event::ParameterStatus(body) => {
                let mine = name(body);
                events[at + 1..]
                    .iter()
                    .any(|e| matches!(e, Event::ParameterStatus(other) if name(other) == mine))
            }
            _ => false,
        };
        if later {
            events.remove(at);
        } else {
            at += 1;
        }
    }
}

/// Applies what the server said while attached: reported parameters and tracked
/// SET/RESET statements that succeeded.
fn apply_events(
    session: &mut Session,
    connection: &mut crate::server::ServerConnection,
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
            // Applied as they happened (see `Downstream::apply_now`).
            Event::Prepared(_) | Event::PrepareFailed(_) | Event::Error(_) => {}
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
            // TLS may hold ciphertext back until a flush; plain TCP returns at once.
            writer.flush().await?;
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
            writer.flush().await?;
            Ok(out.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_latest_parameter_status_per_name_is_kept() {
        let status = |body: &[u8]| Event::ParameterStatus(body.to_vec());
        let mut events = Vec::new();
        for i in 0..1000 {
            events.push(status(format!("application_name\0run {i}\0").as_bytes()));
            events.push(status(b"TimeZone\0UTC\0"));
            keep_latest_parameter_status(&mut events);
        }
        events.push(Event::Error("42601".into()));
        keep_latest_parameter_status(&mut events);
        assert_eq!(
            events,
            vec![
                status(b"application_name\0run 999\0"),
                status(b"TimeZone\0UTC\0"),
                Event::Error("42601".into()),
            ]
        );
    }
}
