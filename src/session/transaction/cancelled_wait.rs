//! A cancel that arrives while a transaction-mode client waits for a server (the
//! pool is busy, or a failover holds it): nothing has reached a server yet, so the
//! proxy answers the waiting request itself as PostgreSQL answers a cancelled one,
//! with ERROR 57014 and ReadyForQuery, and drops it. Without this the cancel would
//! find no server to go to and the client would wait on.

use bytes::{Buf, BytesMut};

use crate::protocol::frame::complete_message_len;
use crate::protocol::{messages, tag, ClientError, SqlState};

/// Takes the client's first whole request (a simple Query, a FunctionCall, or
/// extended-protocol messages through their Sync) off `inbox` and returns the
/// replies for it; None, leaving `inbox` as it is, when no whole request is there
/// yet (the cancel is then ignored, as a cancel before a query starts is).
pub(super) fn answer(inbox: &mut BytesMut, max_message: usize) -> Option<BytesMut> {
    let mut end = 0;
    loop {
        let len = complete_message_len(&inbox[end..], max_message).ok()??;
        let tag = inbox[end];
        end += len;
        if matches!(tag, tag::QUERY | tag::SYNC | tag::FUNCTION_CALL) {
            break;
        }
    }
    inbox.advance(end);
    let error = ClientError::error(
        SqlState::QueryCanceled,
        "canceling statement due to user request",
    );
    let mut replies = BytesMut::from(&error.encode()[..]);
    messages::ready_for_query_idle(&mut replies);
    Some(replies)
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
    fn takes_exactly_the_first_request() {
        let query = message(tag::QUERY, b"select 1\0");
        let batch = [
            message(b'P', b"\0select 2\0\0\0"),
            message(tag::EXECUTE, b"\0\0\0\0\0"),
            message(tag::SYNC, b""),
        ]
        .concat();
        let mut inbox = BytesMut::from(&[query.clone(), batch.clone()].concat()[..]);
        let replies = answer(&mut inbox, 1 << 20).expect("a whole query");
        assert_eq!(replies[0], tag::ERROR_RESPONSE);
        assert_eq!(&replies[replies.len() - 6..], b"Z\0\0\0\x05I");
        assert_eq!(&inbox[..], &batch[..], "the next request stays");
        assert!(answer(&mut inbox, 1 << 20).is_some());
        assert!(inbox.is_empty());
    }

    #[test]
    fn leaves_an_unfinished_request_alone() {
        let unsynced = [message(b'P', b"\0select 2\0\0\0"), message(b'H', b"")].concat();
        let mut inbox = BytesMut::from(&unsynced[..]);
        assert!(answer(&mut inbox, 1 << 20).is_none());
        assert_eq!(&inbox[..], &unsynced[..]);
        let mut partial = BytesMut::from(&message(tag::QUERY, b"select 1\0")[..4]);
        assert!(answer(&mut partial, 1 << 20).is_none());
        assert_eq!(partial.len(), 4);
    }
}
