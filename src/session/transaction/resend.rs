//! When a request may be sent again on another server: only when the server's
//! first reply proves nothing ran. PostgreSQL holds a shutdown interrupt off while
//! committing, so a first reply of 57P01 (shutting down) or 57P03 (not accepting
//! connections), with nothing before it but replies that prove no statement
//! finished, means the request was never executed. A connection that merely drops
//! is never retried: the request may have committed.

/// Retries of one transaction on new servers before the client is told.
pub(super) const MAX_RETRIES: u32 = 5;

use crate::protocol::backend::parse_error_fields;
use crate::protocol::frame::complete_message_len;
use crate::protocol::tag;

pub(super) enum Verdict {
    /// The server is shutting down or cannot serve: nothing ran.
    GoingAway,
    /// An ErrorResponse has started but is not complete yet.
    NeedMore,
    /// A real answer: relay it.
    Answer,
}

/// Judges a server's first bytes in an attach: an ErrorResponse saying the server
/// is shutting down (57P01) or not accepting connections (57P03), with nothing
/// before it but ParseComplete, BindComplete, ParameterDescription, RowDescription
/// or NoData, means the request was never executed: a fast shutdown interrupts a
/// prepared INSERT between its BindComplete and its CommandComplete. (57P02, crash
/// shutdown, can follow a commit that reached the WAL, so it is not in this list;
/// and once a CommandComplete or a row has been seen, the request did run.)
pub(super) fn going_away(buffer: &[u8]) -> Verdict {
    let mut at = 0;
    loop {
        let Some(&message) = buffer.get(at) else {
            // Only harmless replies so far: wait for what follows them.
            return if at == 0 {
                Verdict::Answer
            } else {
                Verdict::NeedMore
            };
        };
        if !matches!(
            message,
            tag::PARSE_COMPLETE
                | tag::BIND_COMPLETE
                | tag::PARAMETER_DESCRIPTION
                | tag::ROW_DESCRIPTION
                | tag::NO_DATA
                | tag::ERROR_RESPONSE
        ) {
            return Verdict::Answer;
        }
        let len = match complete_message_len(&buffer[at..], 1 << 20) {
            Ok(Some(len)) => len,
            Ok(None) => return Verdict::NeedMore,
            Err(_) => return Verdict::Answer,
        };
        if message == tag::ERROR_RESPONSE {
            let fields = parse_error_fields(&buffer[at + 5..at + len]);
            return if matches!(fields.code.as_str(), "57P01" | "57P03") {
                Verdict::GoingAway
            } else {
                Verdict::Answer
            };
        }
        at += len;
    }
}

/// A connection reset before any reply, with a single request sent: the server
/// closed with that request unread in its socket (which is what makes the kernel
/// send a reset), so it never ran.
pub(super) fn reset_before_reply(replayable: bool, requests: u32, error: &std::io::Error) -> bool {
    replayable && requests <= 1 && error.kind() == std::io::ErrorKind::ConnectionReset
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
