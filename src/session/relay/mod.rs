//! The relay: once a session is bound to a server connection, bytes flow both ways
//! unchanged. Each direction runs on its own so neither can block the other; framing
//! is tracked as the bytes pass ([`FrameScanner`]) to enforce the client message size
//! limit, spot Terminate, and follow the transaction status in ReadyForQuery. Nothing
//! that is only forwarded is decoded or copied into another buffer. A draining proxy
//! ends the relay once the server is idle with nothing owed (the client's current
//! transaction has finished). Both reads may be time-limited ([`super::timeouts`]):
//! a client idle in a transaction, a server silent while it owes a reply.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::control::PauseGate;
use crate::metrics::ListenerMetrics;
use crate::protocol::frame::{FrameError, FrameScanner};
use crate::protocol::tag;
use crate::session::timeouts::Timeouts;

/// Read buffer per direction; reads larger than this just take another round.
const BUFFER_SIZE: usize = 16 * 1024;

/// Writes `bytes` and flushes: a TLS server stream may hold written bytes until
/// it is flushed; for plain TCP the flush is a no-op.
pub(crate) async fn send_all<W: AsyncWrite + Unpin>(
    writer: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

/// Why the relay stopped.
#[derive(Debug)]
pub enum RelayEnd {
    /// The client sent Terminate (not forwarded: the server goes back to the pool).
    ClientTerminated,
    /// The client closed its socket or broke it.
    ClientGone(Option<std::io::Error>),
    /// The server closed or broke the connection. `sent_error` says whether the last
    /// thing it sent was an ErrorResponse (usually a FATAL explaining why).
    ServerGone {
        error: Option<std::io::Error>,
        sent_error: bool,
    },
    /// The client sent a message the proxy refuses (bad length, too large).
    ClientProtocol(FrameError),
    /// The client went past a per-client limit of the proxy (FATAL 54000).
    ClientOverLimit(String),
    Shutdown,
    /// Session mode on the write route: the session's node is confirmed demoted
    /// (another node is the primary, or it reports itself a replica).
    Demoted(String),
    /// Session mode under PAUSE: the session stopped at an idle boundary (every
    /// request answered, ReadyForQuery 'I', nothing half-sent either way), so the
    /// server connection may be inspected, kept or replaced.
    Paused,
}

/// What the relay saw, for the session's log line and for deciding whether the
/// server connection is clean enough to reuse.
#[derive(Debug, Default, Clone, Copy)]
pub struct RelayStats {
    pub client_bytes: u64,
    pub server_bytes: u64,
    /// Last transaction status seen in ReadyForQuery ('I', 'T' or 'E').
    pub transaction_status: u8,
    /// Requests that each end in a ReadyForQuery (Query, Sync, FunctionCall) sent.
    pub requests: u64,
    /// ReadyForQuery messages received.
    pub ready: u64,
    /// The client's stream ended on a message boundary.
    pub client_at_boundary: bool,
    /// Everything read from the server so far ends on a message boundary.
    pub server_at_boundary: bool,
    /// The client's last complete message did not end a request (an Execute or
    /// Flush without Sync, COPY data without CopyDone): the server may be working
    /// on something no ReadyForQuery was asked for yet.
    pub client_unsynced: bool,
}

impl RelayStats {
    /// The server owes nothing and is outside any transaction.
    pub fn server_idle(&self) -> bool {
        self.requests == self.ready
            && self.transaction_status == tag::STATUS_IDLE
            && self.client_at_boundary
            && self.server_at_boundary
    }
}

/// What the relay needs besides the two connections.
pub struct RelaySettings<'a> {
    pub max_message_size: usize,
    pub shutdown: &'a CancellationToken,
    pub draining: &'a CancellationToken,
    pub metrics: &'a ListenerMetrics,
    /// Idle-in-transaction and query time limits ([`super::timeouts`]).
    pub timeouts: Timeouts,
    /// Session mode: the pause gate to stop at (None: the relay never pauses).
    pub pause: Option<PauseWatch<'a>>,
}

/// The pause a session-mode relay stops for: `database` paused by `gate`.
pub struct PauseWatch<'a> {
    pub gate: &'a PauseGate,
    pub database: &'a str,
}

impl PauseWatch<'_> {
    /// One SeqCst load while nothing is paused.
    fn paused(&self) -> bool {
        self.gate.is_paused(self.database)
    }
}

/// Progress both directions see: requests sent and answered, and when the current
/// transaction started (for its duration and for draining at its end).
struct Progress {
    requests: AtomicU64,
    ready: AtomicU64,
    idle: AtomicBool,
    busy_since_micros: AtomicU64,
    origin: Instant,
    /// Client bytes forwarded: a COPY FROM STDIN streaming in is not a silent server.
    client_bytes: AtomicU64,
    /// The client's bytes so far end on a message boundary, and the last complete
    /// message ended a request (or there was none): nothing is half-sent. Stored
    /// once per read, not per message.
    client_quiet: AtomicBool,
    /// Everything read from the server so far ends on a message boundary and has
    /// been written to the client.
    server_quiet: AtomicBool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            requests: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            idle: AtomicBool::new(true),
            busy_since_micros: AtomicU64::new(0),
            origin: Instant::now(),
            client_bytes: AtomicU64::new(0),
            client_quiet: AtomicBool::new(true),
            server_quiet: AtomicBool::new(true),
        }
    }

    /// At an idle boundary both ways: the relay may stop without losing or
    /// splitting anything (the pause point of session mode).
    fn quiet(&self) -> bool {
        self.settled()
            && self.client_quiet.load(Ordering::Relaxed)
            && self.server_quiet.load(Ordering::Relaxed)
    }

    fn micros(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }

    /// The client sent requests: a transaction starts if none was running.
    fn sent(&self, requests: u64) {
        self.requests.fetch_add(requests, Ordering::Relaxed);
        if self.idle.swap(false, Ordering::Relaxed) {
            self.busy_since_micros
                .store(self.micros(), Ordering::Relaxed);
        }
    }

    /// Requests counted by [`Progress::sent`] that the server ignores; returns how
    /// many are taken back: never more than are unanswered (a client sending COPY
    /// data outside COPY, which the server also ignores, cannot push the count
    /// below the replies).
    fn ignored(&self, requests: u64) -> u64 {
        let owed = self
            .requests
            .load(Ordering::Relaxed)
            .saturating_sub(self.ready.load(Ordering::Relaxed));
        let taken = requests.min(owed);
        self.requests.fetch_sub(taken, Ordering::Relaxed);
        taken
    }

    /// A ReadyForQuery arrived. Returns the transaction's duration when it ended one.
    fn answered(&self, status: u8) -> Option<Duration> {
        self.ready.fetch_add(1, Ordering::Relaxed);
        if status != tag::STATUS_IDLE || self.idle.swap(true, Ordering::Relaxed) {
            return None;
        }
        let started = self.busy_since_micros.load(Ordering::Relaxed);
        Some(Duration::from_micros(self.micros().saturating_sub(started)))
    }

    /// Every request is answered and the last ReadyForQuery said 'T' or 'E'.
    fn idle_in_transaction(&self) -> Option<u64> {
        let answered = self.requests.load(Ordering::Relaxed) == self.ready.load(Ordering::Relaxed);
        (answered && !self.idle.load(Ordering::Relaxed)).then_some(0)
    }

    /// A request is unanswered; the mark moves while the client sends more.
    fn owed(&self) -> Option<u64> {
        let owed = self.requests.load(Ordering::Relaxed) > self.ready.load(Ordering::Relaxed);
        owed.then(|| self.client_bytes.load(Ordering::Relaxed))
    }

    /// Nothing is owed and no transaction is open.
    fn settled(&self) -> bool {
        self.idle.load(Ordering::Relaxed)
            && self.requests.load(Ordering::Relaxed) == self.ready.load(Ordering::Relaxed)
    }
}

/// Relays until either side stops. `pending` holds client bytes already read (the
/// start of the first request) that go to the server first.
pub async fn relay<CR, CW, SR, SW>(
    client: (&mut CR, &mut CW),
    server: (&mut SR, &mut SW),
    pending: BytesMut,
    settings: &RelaySettings<'_>,
    stats: &mut RelayStats,
) -> RelayEnd
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    let (client_reader, client_writer) = client;
    let (server_reader, server_writer) = server;
    let mut upstream = Direction::default();
    let mut downstream = Direction {
        status: tag::STATUS_IDLE,
        at_boundary: true,
        ..Direction::default()
    };
    let progress = Progress::new();
    let end = {
        // Pinned where they are made (moving them into pinned locals would copy
        // both futures).
        let mut to_server = std::pin::pin!(client_to_server(
            client_reader,
            server_writer,
            pending,
            settings,
            &progress,
            &mut upstream,
        ));
        let mut to_client = std::pin::pin!(server_to_client(
            server_reader,
            client_writer,
            settings,
            &progress,
            &mut downstream,
        ));
        tokio::select! {
            end = to_server.as_mut() => match end {
                RelayEnd::ServerGone { .. } => {
                    let server_gone = |end: &RelayEnd| matches!(end, RelayEnd::ServerGone { .. });
                    Box::pin(after_server_write_failed(to_client, server_gone))
                        .await
                        .unwrap_or(end)
                }
                end => end,
            },
            end = to_client.as_mut() => end,
            _ = settings.shutdown.cancelled() => RelayEnd::Shutdown,
            _ = drained(settings.draining, &progress) => RelayEnd::Shutdown,
            end = paused_while_quiet(settings.pause.as_ref(), &progress) => end,
        }
    };
    stats.client_bytes += upstream.bytes;
    stats.server_bytes += downstream.bytes;
    stats.transaction_status = downstream.status;
    stats.requests += upstream.messages;
    stats.ready += downstream.messages;
    stats.client_at_boundary = upstream.at_boundary;
    stats.server_at_boundary = downstream.at_boundary;
    stats.client_unsynced = !progress.client_quiet.load(Ordering::Relaxed);
    end
}

/// How long the server direction may take, once writing to the server failed, to
/// forward what the server said before it closed (its FATAL) and see it close.
pub(crate) const SERVER_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Writing to the server failed: the server closed the connection, often right
/// after a FATAL that the other direction (`to_client`) has not yet forwarded, or
/// has, but not yet seen the close. Lets it finish, within [`SERVER_CLOSE_GRACE`],
/// so the client gets the server's error, and only that (the end says whether the
/// client was told), rather than the proxy's own "connection lost" after or
/// instead of it. Some(end) if it ended as `server_ended` says within the grace.
pub(crate) async fn after_server_write_failed<F: std::future::Future>(
    to_client: std::pin::Pin<&mut F>,
    server_ended: impl Fn(&F::Output) -> bool,
) -> Option<F::Output> {
    match tokio::time::timeout(SERVER_CLOSE_GRACE, to_client).await {
        Ok(end) if server_ended(&end) => Some(end),
        _ => None,
    }
}

/// Resolves when draining starts while the session is between transactions; a
/// session inside one is ended by the server direction when it finishes.
async fn drained(draining: &CancellationToken, progress: &Progress) {
    draining.cancelled().await;
    if !progress.settled() {
        std::future::pending::<()>().await;
    }
}

/// Resolves with [`RelayEnd::Paused`] when a PAUSE covers the session while it is
/// quiet. A session busy when the pause comes is stopped by the server direction
/// once it is quiet again (its ReadyForQuery 'I'). Woken only by PAUSE; between
/// pauses a wake-up of the relay costs this branch an atomic load.
async fn paused_while_quiet(pause: Option<&PauseWatch<'_>>, progress: &Progress) -> RelayEnd {
    let Some(pause) = pause else {
        return std::future::pending().await;
    };
    loop {
        // Subscribed before the state is read: a PAUSE after the read fires it.
        let next = pause.gate.next_pause().subscribe();
        if pause.paused() && progress.quiet() {
            return RelayEnd::Paused;
        }
        next.fired().await;
    }
}

/// Counters one direction keeps.
#[derive(Default)]
struct Direction {
    bytes: u64,
    /// Client: requests ending in ReadyForQuery; server: ReadyForQuery messages.
    messages: u64,
    /// Server: last transaction status.
    status: u8,
    /// Stopped on a message boundary (the server: what was read from it).
    at_boundary: bool,
}

/// What the relay notes about client messages as they pass.
#[derive(Default)]
struct ClientWatch {
    /// Where a Terminate starts: it stays with the proxy (the server is pooled),
    /// and is found at its type byte, so none of it is forwarded even when the
    /// rest of it arrives in a later read.
    terminate_at: Option<usize>,
    /// Requests answered by a ReadyForQuery (Query, Sync, FunctionCall).
    requests: u64,
    /// Simple queries and Executes.
    queries: u64,
    /// The tag of the last complete message.
    last: Option<u8>,
    /// Syncs since the last Execute (carried from read to read). When COPY data
    /// follows, they reached the server in copy-in mode, where it ignores Sync
    /// (extended-protocol COPY FROM STDIN: drivers send Bind, Execute, Sync, the
    /// data, CopyDone, Sync, and only the last Sync gets a ReadyForQuery).
    syncs_after_execute: u64,
    /// Requests counted earlier that the server ignores (those Syncs).
    ignored: u64,
}

impl ClientWatch {
    /// Nothing of the client's is half-sent, given where the bytes before this
    /// read stood (`before`): the last complete message ended a request, or
    /// ended the COPY data its request asked for (CopyDone, CopyFail).
    fn quiet(&self, at_boundary: bool, before: bool) -> bool {
        at_boundary
            && match self.last {
                None => before,
                Some(last) => matches!(
                    last,
                    tag::QUERY | tag::SYNC | tag::FUNCTION_CALL | tag::COPY_DONE | tag::COPY_FAIL
                ),
            }
    }
}

impl crate::protocol::frame::FrameVisitor for ClientWatch {
    fn start(&mut self, tag: u8, at: usize) {
        if tag == tag::TERMINATE && self.terminate_at.is_none() {
            self.terminate_at = Some(at);
        }
    }

    fn end(&mut self, frame: crate::protocol::frame::Frame<'_>) {
        if self.terminate_at.is_some() {
            return;
        }
        self.last = Some(frame.tag);
        match frame.tag {
            tag::QUERY => {
                self.requests += 1;
                self.queries += 1;
            }
            tag::SYNC => {
                self.requests += 1;
                self.syncs_after_execute += 1;
            }
            tag::FUNCTION_CALL => self.requests += 1,
            tag::EXECUTE => {
                self.queries += 1;
                self.syncs_after_execute = 0;
            }
            tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL if self.syncs_after_execute > 0 => {
                self.ignored += self.syncs_after_execute;
                self.syncs_after_execute = 0;
            }
            _ => {}
        }
    }
}

fn never_capture(_: u8) -> bool {
    false
}

/// ReadyForQuery for the transaction status; ErrorResponse for its SQLSTATE class
/// (metrics). Both are small; everything else streams through uncaptured.
fn capture_ready_and_errors(tag: u8) -> bool {
    tag == tag::READY_FOR_QUERY || tag == tag::ERROR_RESPONSE
}

async fn client_to_server<R, W>(
    reader: &mut R,
    writer: &mut W,
    pending: BytesMut,
    settings: &RelaySettings<'_>,
    progress: &Progress,
    counters: &mut Direction,
) -> RelayEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut scanner = FrameScanner::new(settings.max_message_size, never_capture);
    let mut syncs_after_execute = 0;
    let mut buffer = pending;
    buffer.reserve(BUFFER_SIZE);
    loop {
        if buffer.is_empty() {
            counters.at_boundary = scanner.at_boundary();
            let idle = || progress.idle_in_transaction();
            match settings
                .timeouts
                .client_read(reader.read_buf(&mut buffer), idle)
                .await
            {
                Ok(0) => return RelayEnd::ClientGone(None),
                Ok(_) => {}
                Err(e) => return RelayEnd::ClientGone(Some(e)),
            }
        }
        let mut watch = ClientWatch {
            syncs_after_execute,
            ..ClientWatch::default()
        };
        if let Err(e) = scanner.scan_with(&buffer, &mut watch) {
            return RelayEnd::ClientProtocol(e);
        }
        syncs_after_execute = watch.syncs_after_execute;
        counters.messages += watch.requests;
        if watch.requests > 0 {
            progress.sent(watch.requests);
        }
        if watch.ignored > 0 {
            let taken = progress.ignored(watch.ignored);
            counters.messages = counters.messages.saturating_sub(taken);
        }
        if watch.queries > 0 {
            settings.metrics.add_queries(watch.queries);
        }
        let before = progress.client_quiet.load(Ordering::Relaxed);
        progress.client_quiet.store(
            watch.quiet(scanner.at_boundary(), before),
            Ordering::Relaxed,
        );
        let terminate_at = watch.terminate_at;
        let upto = terminate_at.unwrap_or(buffer.len());
        if let Err(e) = send_all(writer, &buffer[..upto]).await {
            return server_gone(Some(e), false);
        }
        counters.bytes += upto as u64;
        progress
            .client_bytes
            .fetch_add(upto as u64, Ordering::Relaxed);
        settings.metrics.add_received_bytes(upto as u64);
        if terminate_at.is_some() {
            counters.at_boundary = true;
            return RelayEnd::ClientTerminated;
        }
        buffer.clear();
    }
}

async fn server_to_client<R, W>(
    reader: &mut R,
    writer: &mut W,
    settings: &RelaySettings<'_>,
    progress: &Progress,
    counters: &mut Direction,
) -> RelayEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Server messages are not size-limited: a DataRow may be up to 1 GB and is
    // streamed through, never held whole.
    let mut scanner = FrameScanner::new(u32::MAX as usize, capture_ready_and_errors);
    let mut buffer = BytesMut::with_capacity(BUFFER_SIZE);
    let mut last_was_error = false;
    let metrics = settings.metrics;
    loop {
        let owed = || progress.owed();
        match settings
            .timeouts
            .server_read(reader.read_buf(&mut buffer), owed)
            .await
        {
            Ok(0) => return server_gone(None, last_was_error),
            Ok(_) => {}
            Err(e) => return server_gone(Some(e), last_was_error),
        }
        let scanned = scanner.scan(&buffer, |frame| {
            last_was_error = frame.tag == tag::ERROR_RESPONSE;
            match frame.tag {
                tag::READY_FOR_QUERY => {
                    counters.messages += 1;
                    let status = frame.body.first().copied().unwrap_or(tag::STATUS_IDLE);
                    counters.status = status;
                    if let Some(took) = progress.answered(status) {
                        metrics.record_transaction(took);
                    }
                }
                tag::ERROR_RESPONSE => {
                    let code = crate::protocol::backend::parse_error_fields(frame.body).code;
                    crate::metrics::record_error(metrics.listener(), &code);
                }
                _ => {}
            }
        });
        if let Err(e) = scanned {
            tracing::error!(error = %e, "server sent an invalid message length");
            return server_gone(None, false);
        }
        counters.at_boundary = scanner.at_boundary();
        progress.server_quiet.store(false, Ordering::Relaxed);
        let written = match writer.write_all(&buffer).await {
            Ok(()) => writer.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            return RelayEnd::ClientGone(Some(e));
        }
        progress
            .server_quiet
            .store(scanner.at_boundary(), Ordering::Relaxed);
        counters.bytes += buffer.len() as u64;
        metrics.add_sent_bytes(buffer.len() as u64);
        buffer.clear();
        if settings.draining.is_cancelled() && progress.settled() && scanner.at_boundary() {
            return RelayEnd::Shutdown;
        }
        // A PAUSE that came while the session was busy takes hold here, once the
        // server's last reply (ReadyForQuery 'I') has reached the client.
        if settings.pause.as_ref().is_some_and(PauseWatch::paused) && progress.quiet() {
            return RelayEnd::Paused;
        }
    }
}

fn server_gone(error: Option<std::io::Error>, sent_error: bool) -> RelayEnd {
    RelayEnd::ServerGone { error, sent_error }
}

#[cfg(test)]
mod tests;
