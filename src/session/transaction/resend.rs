//! When a request may be sent again on another server. All four must hold:
//!
//! 1. the server's first reply is a FATAL 57P01 (shutting down) or 57P03 (not
//!    accepting connections), with nothing before it but replies that prove no
//!    statement finished (ParseComplete, BindComplete, descriptions) — PostgreSQL
//!    holds a shutdown interrupt off while committing, so the statement did not
//!    commit ([`Judge`]); an ERROR with the same SQLSTATE (raised by a user, or
//!    re-raised from a remote server) is an answer, not a shutdown;
//! 2. the node is really leaving: the topology no longer routes this listener to
//!    it, or it refuses a new login (57P03, or the connection is refused) —
//!    `pg_terminate_backend()` by a DBA ends one backend on a node that still
//!    accepts logins, so its victim gets the error ([`node_is_leaving`]);
//! 3. the request is one statement that does its work inside the transaction
//!    that was interrupted: not `CALL` or `DO` (which may commit inside), not a
//!    multi-statement string, not `VACUUM`, not `... CONCURRENTLY`, nothing that
//!    calls dblink ([`RequestShape`], on the lexer of
//!    [`sql_lex`](crate::session::sql_lex));
//! 4. it has not been sent again before (the caller counts).
//!
//! While nothing has reached the client, the proxy keeps a copy of the request
//! and holds back the harmless first replies to judge them; both are bounded by
//! [`MAX_HELD`] bytes per client and the proxy-wide buffer budget, and a Flush
//! from the client ends the holding at once (it waits for those replies).

use crate::config::Route;
use crate::pool::ServerPool;
use crate::protocol::backend::parse_error_fields;
use crate::protocol::frame::{complete_message_len, Message, Messages};
use crate::protocol::{split_cstr, tag};
use crate::session::sql_lex::{Kind, Lexer, Splitter};
use crate::session::statements::ClientStatements;
use crate::session::SessionEnv;

/// Resends of one transaction on new servers before the client is told.
pub(super) const MAX_RETRIES: u32 = 1;

/// The most a client's request copy, or the server replies held back to judge,
/// may take; past it the request is no longer resendable.
pub(super) const MAX_HELD: usize = 64 * 1024;

pub(super) enum Verdict {
    /// The server is shutting down or cannot serve: nothing ran.
    GoingAway,
    /// Only harmless replies so far, or an ErrorResponse not complete yet.
    NeedMore,
    /// A real answer: relay it.
    Answer,
}

/// Judges a server's first bytes in an attach, remembering how far it has read
/// so held bytes are never scanned twice.
#[derive(Default)]
pub(super) struct Judge {
    at: usize,
}

impl Judge {
    /// `buffer` holds every server byte of this attach so far (it only grows
    /// between calls while the verdict is [`Verdict::NeedMore`]).
    pub(super) fn judge(&mut self, buffer: &[u8]) -> Verdict {
        loop {
            let Some(&message) = buffer.get(self.at) else {
                // Only harmless replies so far: wait for what follows them.
                return if self.at == 0 {
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
            let len = match complete_message_len(&buffer[self.at..], MAX_HELD) {
                Ok(Some(len)) => len,
                Ok(None) => return Verdict::NeedMore,
                Err(_) => return Verdict::Answer,
            };
            if message == tag::ERROR_RESPONSE {
                let fields = parse_error_fields(&buffer[self.at + 5..self.at + len]);
                let shutdown =
                    fields.severity == "FATAL" && matches!(fields.code.as_str(), "57P01" | "57P03");
                return if shutdown {
                    Verdict::GoingAway
                } else {
                    Verdict::Answer
                };
            }
            self.at += len;
        }
    }
}

/// A connection reset before any reply, with a single request sent: the server
/// closed with that request unread in its socket (which is what makes the kernel
/// send a reset), so it never ran.
pub(super) fn reset_before_reply(requests: u32, error: &std::io::Error) -> bool {
    requests <= 1 && error.kind() == std::io::ErrorKind::ConnectionReset
}

/// What the client's request in this attach consists of, noted message by
/// message as it is copied for a possible resend.
#[derive(Default)]
pub(super) struct RequestShape {
    /// Statements the request runs (each simple-query statement, each Execute).
    executions: u32,
    /// Something in it may take effect outside the interrupted transaction.
    unsafe_work: bool,
    /// Whether the unnamed statement parsed in this request is safe to run again.
    unnamed_safe: Option<bool>,
    /// Whether the statement bound by the last Bind is.
    bound_safe: bool,
}

impl RequestShape {
    /// The shape of a copied request (complete client messages).
    pub(super) fn of(request: &[u8], client: &ClientStatements) -> RequestShape {
        let mut shape = RequestShape::default();
        for message in Messages::new(request, usize::MAX) {
            shape.note(&message, client);
        }
        shape
    }

    fn note(&mut self, message: &Message<'_>, client: &ClientStatements) {
        match message.tag {
            tag::QUERY => {
                self.executions += 1;
                self.unsafe_work |= !resendable_statement(message.body);
            }
            tag::PARSE => {
                if let Some((name, rest)) = split_cstr(message.body) {
                    if name.is_empty() {
                        self.unnamed_safe = Some(resendable_statement(rest));
                    }
                }
            }
            tag::BIND => {
                let statement = split_cstr(message.body)
                    .and_then(|(_portal, rest)| split_cstr(rest))
                    .map(|(statement, _)| statement);
                self.bound_safe = match statement {
                    Some([]) => self.unnamed_safe.unwrap_or(false),
                    Some(name) => client
                        .get(name)
                        .is_some_and(|def| resendable_statement(&def.body)),
                    None => false,
                };
            }
            tag::EXECUTE => {
                self.executions += 1;
                self.unsafe_work |= !self.bound_safe;
            }
            tag::SYNC | tag::FLUSH | tag::DESCRIBE | tag::CLOSE => {}
            // FunctionCall, CopyData outside COPY, anything unknown.
            _ => self.unsafe_work = true,
        }
    }

    /// One statement, safe to run again.
    pub(super) fn resendable(&self) -> bool {
        self.executions == 1 && !self.unsafe_work
    }
}

/// Whether `text` (a query, up to its NUL) is a single statement whose effects
/// all belong to the transaction it runs in.
fn resendable_statement(text: &[u8]) -> bool {
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    let sql = &text[..end];
    let mut splitter = Splitter::default();
    let mut statements = 0;
    let mut words_in_statement = 0;
    for token in Lexer::new(sql) {
        if splitter.ends_statement(&token, sql) {
            words_in_statement = 0;
            continue;
        }
        if words_in_statement == 0 {
            statements += 1;
            const COMMITS_ON_ITS_OWN: [&[u8]; 6] = [
                b"call",
                b"do",
                b"vacuum",
                b"checkpoint",
                b"reindex",
                b"cluster",
            ];
            if statements > 1 || COMMITS_ON_ITS_OWN.iter().any(|word| token.is(sql, word)) {
                return false;
            }
        }
        words_in_statement += 1;
        let word = token.text(sql);
        let remote = token.kind == Kind::Word
            && word.len() >= 6
            && word[..6].eq_ignore_ascii_case(b"dblink");
        if token.is(sql, b"concurrently") || remote {
            return false;
        }
    }
    statements == 1
}

/// Whether the node a FATAL shutdown came from is leaving: the topology no longer
/// sends this listener there, or it refuses a new login. A node that still
/// accepts logins only lost one backend (a DBA's `pg_terminate_backend()`).
pub(super) async fn node_is_leaving(env: &SessionEnv, pool: &ServerPool) -> bool {
    let topology = env.ctx.topology().load();
    let node = &pool.key.node;
    let still_routed = match env.listener.config.route {
        Route::Primary => topology
            .primary_node()
            .is_some_and(|i| topology.nodes[i].name == *node),
        Route::Replica => topology.replicas().any(|i| topology.nodes[i].name == *node),
    };
    if !still_routed {
        tracing::info!(node = %node, "the topology no longer routes here: the node is leaving");
        return true;
    }
    match pool.probe_login().await {
        Ok(()) => {
            tracing::info!(node = %node, "the node still accepts logins: only this backend ended");
            false
        }
        Err(e) if e.says_node_is_leaving() => {
            tracing::info!(node = %node, error = %e, "the node refuses logins: it is leaving");
            true
        }
        Err(e) => {
            tracing::info!(node = %node, error = %e, "cannot tell whether the node is leaving");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_message as message;

    fn going_away(buffer: &[u8]) -> Verdict {
        Judge::default().judge(buffer)
    }

    #[test]
    fn only_a_fatal_first_reply_saying_shutdown_counts_as_never_ran() {
        let shutdown = message(b'E', b"SFATAL\0C57P01\0Mterminating connection\0\0");
        assert!(matches!(going_away(&shutdown), Verdict::GoingAway));
        assert!(matches!(going_away(&shutdown[..7]), Verdict::NeedMore));
        let refusing = message(b'E', b"SFATAL\0VFATAL\0C57P03\0\0");
        assert!(matches!(going_away(&refusing), Verdict::GoingAway));
        let raised = message(b'E', b"SERROR\0VERROR\0C57P01\0Mraised by a user\0\0");
        assert!(
            matches!(going_away(&raised), Verdict::Answer),
            "an ERROR with a shutdown code is an answer"
        );
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

    #[test]
    fn the_judge_resumes_where_it_stopped() {
        let mut judge = Judge::default();
        let mut held = message(b'1', b"");
        assert!(matches!(judge.judge(&held), Verdict::NeedMore));
        held.extend_from_slice(&message(b'2', b""));
        assert!(matches!(judge.judge(&held), Verdict::NeedMore));
        assert_eq!(judge.at, held.len(), "scanned once");
        held.extend_from_slice(&message(b'E', b"SFATAL\0C57P01\0\0"));
        assert!(matches!(judge.judge(&held), Verdict::GoingAway));
    }

    #[test]
    fn which_statements_may_run_again() {
        #[rustfmt::skip]
        let cases: &[(&str, bool)] = &[
            ("insert into t values (1)", true),
            ("  /* app: x */ -- note\n update t set a = 1;  ", true),
            ("select nextval('s')", true),
            ("call transfer(1, 2)", false),
            ("CALL transfer(1, 2)", false),
            ("/* c */ do $$ begin commit; end $$", false),
            ("insert into t values (1); insert into t values (2)", false),
            ("select 'a;b' -- ; not a second statement", true),
            ("select $$;$$; select 2", false),
            ("create index concurrently i on t (a)", false),
            ("vacuum t", false),
            ("select dblink_exec('x', 'insert ...')", false),
            ("", false),
            (";", false),
        ];
        for (text, expected) in cases {
            assert_eq!(resendable_statement(text.as_bytes()), *expected, "{text:?}");
        }
    }

    #[test]
    fn a_request_is_resendable_only_when_it_runs_one_safe_statement() {
        let client = ClientStatements::default();
        let shape_of = |bytes: &[u8]| RequestShape::of(bytes, &client).resendable();
        let query = |sql: &str| message(b'Q', format!("{sql}\0").as_bytes());
        let parse = |sql: &str| message(b'P', format!("\0{sql}\0\0\0").as_bytes());
        let bind = message(b'B', b"\0\0\0\0\0\0\0\0");
        let execute = message(b'E', b"\0\0\0\0\0");
        let sync = message(b'S', b"");
        assert!(shape_of(&query("insert into t values (1)")));
        assert!(!shape_of(&query("call p()")));
        assert!(!shape_of(
            &[query("insert into t values (1)"), query("select 1")].concat()
        ));
        let extended = [
            parse("insert into t values ($1)"),
            bind.clone(),
            execute.clone(),
            sync.clone(),
        ]
        .concat();
        assert!(shape_of(&extended));
        let twice = [
            parse("insert into t values ($1)"),
            bind.clone(),
            execute.clone(),
            bind.clone(),
            execute.clone(),
            sync.clone(),
        ]
        .concat();
        assert!(!shape_of(&twice), "two executions");
        let procedure = [parse("call p()"), bind.clone(), execute.clone(), sync].concat();
        assert!(!shape_of(&procedure));
        let unknown_statement = message(b'B', b"\0missing\0\0\0\0\0\0\0");
        assert!(!shape_of(&[unknown_statement, execute].concat()));
        assert!(!shape_of(&message(b'd', b"copy data")));
    }
}
