//! A transaction-mode request that waits before it reaches a server (PAUSE, the
//! failover hold, the pool's queue) while its client can still give up on it.
//!
//! A client that closes its socket, or whose driver sends a CancelRequest (as
//! query timeouts in asyncpg and JDBC do), has been told its request failed and
//! may already have retried it on another connection: running it later, when a
//! server frees up, would run it twice. So while the request waits, the client's
//! socket is read (into the same inbox, bounded) and its cancel key is watched:
//! - the socket closes: the wait ends and the session with it; nothing ran;
//! - a cancel arrives: the request is answered as PostgreSQL answers a cancelled
//!   statement (ERROR 57014, then ReadyForQuery), its messages are dropped, and
//!   the session goes on with whatever the client sent after it. An extended
//!   batch still without its Sync (asyncpg's Parse/Describe/Flush) gets the error
//!   at once and, as PostgreSQL does after an error, the client's messages are
//!   dropped until its Sync, which gets the ReadyForQuery.
//!
//! The uncontended checkout finishes on its first poll and pays for none of this.

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::Poll;

use bytes::BytesMut;

use super::relay::RelayEnd;
use super::{Refusal, Session};
use crate::cancel::Registration;
use crate::pool::PooledServer;
use crate::protocol::frame::Messages;
use crate::protocol::{messages, tag, ClientError, SqlState};
use crate::tls::ClientStream;

/// How far the inbox may grow with what the client sends while its request
/// waits; past it the socket is left unread (a closed socket then goes unseen
/// until the request runs), so a client cannot make the proxy buffer without end.
const INBOX_LIMIT_WHILE_WAITING: usize = 64 * 1024;

/// How a wait ended.
pub(super) enum Waited<T> {
    /// The wait finished (a server, or the refusal to send).
    Done(T),
    /// The client closed or broke its socket; nothing of the request ran.
    ClientGone(RelayEnd),
    /// The client cancelled the request; it was answered and dropped from the inbox.
    Cancelled,
    /// The client cancelled an extended batch whose Sync has not arrived: the
    /// error was sent; drop what it sends up to the Sync ([`skip_to_sync`]), then
    /// answer ReadyForQuery.
    CancelledBeforeSync,
}

/// The session's checkout for its next request, given up if the client gives up.
/// The cancel key points at the server before the wait ends.
pub(super) async fn checkout(
    session: &mut Session,
    socket: &mut ClientStream,
    inbox: &mut BytesMut,
    registration: &Registration,
) -> Waited<Result<PooledServer, Refusal>> {
    let max_message = session.env.config.client.max_message_size.0 as usize;
    let set_target = |checkout: &Result<PooledServer, Refusal>| {
        if let Ok(server) = checkout {
            registration.set_target(Some(server.cancel_target()));
        }
    };
    // The checkout (and whatever it holds: a place in the queue, a hold) is
    // dropped before a cancelled request is answered, so the client never sees
    // its answer while the proxy still counts it as waiting.
    let watched = {
        // Made here, not passed in: moving the checkout future would copy it on
        // every transaction.
        let mut checkout = pin!(session.checkout());
        let first = std::future::poll_fn(|cx| Poll::Ready(checkout.as_mut().poll(cx))).await;
        match first {
            Poll::Ready(done) => {
                set_target(&done);
                return Waited::Done(done);
            }
            // Boxed: only a request that has to wait pays for the watching future,
            // and every session future (idle ones included) stays as small as before.
            Poll::Pending => {
                Box::pin(unless_client_gives_up(
                    checkout,
                    socket,
                    inbox,
                    registration,
                    set_target,
                ))
                .await
            }
        }
    };
    match watched {
        Watched::Done(done) => Waited::Done(done),
        Watched::ClientGone(end) => Waited::ClientGone(end),
        // Boxed: rare, and kept out of every session's future.
        Watched::Cancelled => match Box::pin(answer_cancelled(socket, inbox, max_message)).await {
            Ok(true) => Waited::Cancelled,
            Ok(false) => Waited::CancelledBeforeSync,
            Err(end) => Waited::ClientGone(end),
        },
    }
}

/// How watching a wait ended.
enum Watched<T> {
    Done(T),
    ClientGone(RelayEnd),
    /// A CancelRequest came; the request is still to be answered.
    Cancelled,
}

/// Goes on with `wait` (polled once already) unless the client gives up first.
/// `on_done` runs before the cancel key stops pointing at the waiting request, so
/// the caller can point it at the server it got and no cancel falls between the
/// two.
async fn unless_client_gives_up<F: Future>(
    mut wait: Pin<&mut F>,
    socket: &mut ClientStream,
    inbox: &mut BytesMut,
    registration: &Registration,
    on_done: impl FnOnce(&F::Output),
) -> Watched<F::Output> {
    let mut cancelled = pin!(registration.cancel_while_waiting());
    cancelled.as_mut().enable();
    let _waiting = registration.waiting();
    // The client's giving up comes first: when it coincides with a server
    // freeing up, the request must not run. A checkout dropped after the pool
    // handed it a slot gives the slot back.
    tokio::select! {
        biased;
        () = &mut cancelled => Watched::Cancelled,
        end = client_leaves(socket, inbox) => Watched::ClientGone(end),
        done = wait.as_mut() => {
            on_done(&done);
            Watched::Done(done)
        }
    }
}

/// Resolves when the client closes or breaks its socket; reads what it sends
/// meanwhile into `inbox`, up to [`INBOX_LIMIT_WHILE_WAITING`].
async fn client_leaves(socket: &mut ClientStream, inbox: &mut BytesMut) -> RelayEnd {
    loop {
        if inbox.len() >= INBOX_LIMIT_WHILE_WAITING {
            return std::future::pending().await;
        }
        if let Err(e) = socket.readable().await {
            return RelayEnd::ClientGone(Some(e));
        }
        if let Err(end) = super::read_available(socket, inbox).await {
            return end;
        }
    }
}

/// Answers the request at the front of `inbox` as cancelled and drops it: a
/// Query or FunctionCall, or extended-protocol messages through their Sync. An
/// extended batch without its Sync yet gets the error, and its complete messages
/// are dropped: Ok(false), the caller then drops the rest through the Sync
/// ([`Waited::CancelledBeforeSync`]).
async fn answer_cancelled(
    socket: &mut ClientStream,
    inbox: &mut BytesMut,
    max_message: usize,
) -> Result<bool, RelayEnd> {
    let mut reply = BytesMut::from(
        &ClientError::error(
            SqlState::QueryCanceled,
            "canceling statement due to user request",
        )
        .encode()[..],
    );
    let complete = match request_end(inbox, max_message) {
        Some(end) => {
            let _ = inbox.split_to(end);
            messages::ready_for_query_idle(&mut reply);
            true
        }
        None => {
            skip_to_sync(inbox, max_message);
            false
        }
    };
    super::send_all(socket, &reply)
        .await
        .map_err(|e| RelayEnd::ClientGone(Some(e)))?;
    Ok(complete)
}

/// Drops the complete messages at the front of `inbox` through the first Sync;
/// true when a Sync was among them (the caller then sends ReadyForQuery), false
/// when all complete messages were dropped without one.
pub(super) fn skip_to_sync(inbox: &mut BytesMut, max_message: usize) -> bool {
    let mut messages = Messages::new(inbox, max_message);
    let mut found = false;
    for message in messages.by_ref() {
        if message.tag == tag::SYNC {
            found = true;
            break;
        }
    }
    let consumed = messages.consumed();
    let _ = inbox.split_to(consumed);
    found
}

/// Where the first request in `buf` ends: after a Query or FunctionCall that
/// comes first, or after the first Sync; None when it is not all there yet.
fn request_end(buf: &[u8], max_message: usize) -> Option<usize> {
    let mut messages = Messages::new(buf, max_message);
    while let Some(message) = messages.next() {
        if matches!(message.tag, tag::QUERY | tag::FUNCTION_CALL)
            && messages.consumed() == message.bytes.len()
        {
            return Some(messages.consumed());
        }
        if message.tag == tag::SYNC {
            return Some(messages.consumed());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn a_request_ends_after_its_query_or_its_sync() {
        let query = message(tag::QUERY, b"select 1\0");
        let parse = message(tag::PARSE, b"\0select 1\0\0\0");
        let bind = message(tag::BIND, b"\0\0\0\0\0\0\0\0");
        let execute = message(tag::EXECUTE, b"\0\0\0\0\0");
        let sync = message(tag::SYNC, b"");
        let flush = message(tag::FLUSH, b"");

        let both = [query.clone(), query.clone()].concat();
        assert_eq!(
            request_end(&both, 1 << 20),
            Some(query.len()),
            "the first query only"
        );

        let batch = [
            parse.clone(),
            bind.clone(),
            execute.clone(),
            sync.clone(),
            query.clone(),
        ]
        .concat();
        assert_eq!(
            request_end(&batch, 1 << 20),
            Some(batch.len() - query.len()),
            "through the Sync"
        );

        let unsynced = [parse.clone(), flush, bind, execute].concat();
        assert_eq!(request_end(&unsynced, 1 << 20), None, "no Sync yet");

        // A Query after extended messages belongs to the next request; the batch
        // before it is not complete.
        let mixed = [parse, query.clone()].concat();
        assert_eq!(request_end(&mixed, 1 << 20), None);

        let partial = &query[..query.len() - 1];
        assert_eq!(request_end(partial, 1 << 20), None, "a partial message");
    }
}
