//! The client-to-server half of a transaction-mode session: takes complete client
//! messages from the inbox and writes what the server must receive, recording in
//! the [`Ledger`] what the server will owe. Named prepared statements are mapped to
//! server names (preparing them first where this server lacks them); everything else
//! passes unchanged. The statement texts themselves are never decoded.

use std::sync::Arc;

use bytes::BytesMut;

use super::ledger::{Effect, Expect, Ledger};
use super::settings::parse_param_change;
use super::statements::{ClientStatements, OverLimit};
use crate::protocol::frame::complete_message_len;
use crate::protocol::frame::FrameError;
use crate::protocol::frontend;
use crate::protocol::messages;
use crate::protocol::messages::{CLOSE_COMPLETE, PARSE_COMPLETE};
use crate::protocol::split_cstr;
use crate::protocol::tag;
use crate::server::statements::{ServerStatements, StatementDef};

/// What one pass over the inbox found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Translated {
    /// The client sent Terminate: stop after writing `out`.
    pub terminate: bool,
    /// Client bytes consumed (whole messages, Terminate excluded).
    pub bytes: u64,
    /// Simple queries and Executes among them.
    pub queries: u64,
}

/// Why translation stopped.
#[derive(Debug)]
pub enum TranslateError {
    /// A message with a bad or too large length.
    Frame(FrameError),
    /// The client's prepared statements would take more than their bound.
    Statements(OverLimit),
}

impl From<FrameError> for TranslateError {
    fn from(e: FrameError) -> TranslateError {
        TranslateError::Frame(e)
    }
}

pub struct Translator<'a> {
    pub ledger: &'a mut Ledger,
    pub client: &'a mut ClientStatements,
    pub server: &'a mut ServerStatements,
    pub max_prepared: usize,
    pub max_message: usize,
}

impl Translator<'_> {
    /// Moves every complete message from `inbox` to `out` (translated).
    pub fn run(
        &mut self,
        inbox: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<Translated, TranslateError> {
        let mut result = Translated::default();
        let batch_start = self.server.tick();
        while let Some(len) = complete_message_len(inbox, self.max_message)? {
            let message = inbox.split_to(len);
            let tag = message[0];
            if tag == tag::TERMINATE {
                result.terminate = true;
                break;
            }
            result.bytes += len as u64;
            result.queries += u64::from(matches!(tag, tag::QUERY | tag::EXECUTE));
            self.translate(tag, &message, out, batch_start)
                .map_err(TranslateError::Statements)?;
        }
        if inbox.is_empty() && inbox.capacity() > 64 * 1024 {
            // A one-off large message should not pin its buffer for the session.
            *inbox = BytesMut::new();
        }
        Ok(result)
    }

    fn translate(
        &mut self,
        tag: u8,
        message: &[u8],
        out: &mut BytesMut,
        batch_start: u64,
    ) -> Result<(), OverLimit> {
        let body = &message[5..];
        match tag {
            tag::QUERY => {
                let change = if starts_like_setting(body) {
                    parse_param_change(body)
                } else {
                    None
                };
                if change.is_some() && self.ledger.status() != tag::STATUS_IDLE {
                    self.ledger.untracked_settings = true;
                }
                self.ledger.push(Expect::Ready { change });
                if starts_with_word(body, b"discard")
                    || starts_with_word(body, b"deallocate") && contains_word_all(body)
                {
                    // These drop the server's prepared statements behind the proxy's
                    // back (including the shared sy_ ones).
                    self.server.clear();
                    self.ledger.statements_reset = true;
                }
                if starts_with_word(body, b"listen") {
                    // Notifications go to whichever server the listener happened to be
                    // on, so they would be lost. The server raises the error, which
                    // keeps transaction semantics exactly as for any failed statement.
                    messages::query(out, REFUSE_LISTEN);
                } else {
                    out.extend_from_slice(message);
                }
            }
            tag::PARSE => return self.parse(body, message, out, batch_start),
            tag::BIND => self.bind(body, message, out, batch_start),
            tag::DESCRIBE => self.describe(body, message, out, batch_start),
            tag::CLOSE => self.close(body, message, out),
            tag::EXECUTE => {
                self.ledger.set_batch_open(true);
                self.ledger.push(Expect::Execute);
                out.extend_from_slice(message);
            }
            tag::SYNC => {
                self.ledger.set_batch_open(false);
                self.ledger.client_sync();
                out.extend_from_slice(message);
            }
            tag::COPY_DONE | tag::COPY_FAIL => {
                self.ledger.client_copy_end();
                out.extend_from_slice(message);
            }
            tag::FUNCTION_CALL => {
                self.ledger.push(Expect::Ready { change: None });
                out.extend_from_slice(message);
            }
            // Flush, CopyData and anything unknown (the server judges it).
            _ => out.extend_from_slice(message),
        }
        Ok(())
    }

    fn parse(
        &mut self,
        body: &[u8],
        message: &[u8],
        out: &mut BytesMut,
        batch_start: u64,
    ) -> Result<(), OverLimit> {
        self.ledger.set_batch_open(true);
        let name = match split_cstr(body) {
            Some((name, _)) if !name.is_empty() => name,
            _ => {
                // The unnamed statement, or a malformed message the server will reject.
                self.ledger.push(Expect::Complete {
                    suppress: false,
                    effect: Effect::None,
                });
                out.extend_from_slice(message);
                return Ok(());
            }
        };
        if starts_like_setting(body.get(name.len() + 1..).unwrap_or_default()) {
            self.ledger.untracked_settings = true;
        }
        let def = Arc::new(StatementDef::from_parse_body(body, name.len()));
        self.client.insert(name, Arc::clone(&def))?;
        if self.server.touch(&def) {
            self.ledger.push(Expect::Synthetic(PARSE_COMPLETE));
        } else {
            self.prepare_on_server(def, false, out, batch_start);
        }
        Ok(())
    }

    /// Sends a Parse for `def` under its server name. `suppress`: the client did not
    /// ask for it, so its ParseComplete is swallowed.
    fn prepare_on_server(
        &mut self,
        def: Arc<StatementDef>,
        suppress: bool,
        out: &mut BytesMut,
        batch_start: u64,
    ) {
        while let Some(evicted) = self
            .server
            .evict_over(self.max_prepared.saturating_sub(1), batch_start)
        {
            messages::close_statement(out, evicted.server_name.as_bytes());
            self.ledger.push(Expect::Complete {
                suppress: true,
                effect: Effect::Closed(evicted),
            });
        }
        def.put_parse(out);
        self.server.insert(Arc::clone(&def));
        self.ledger.push(Expect::Complete {
            suppress,
            effect: Effect::Prepared(def),
        });
    }

    /// The server name for a client statement name, preparing it on this server if
    /// needed; None for the unnamed statement or a name the client never prepared
    /// (forwarded as is, so the server reports the error).
    fn server_statement(
        &mut self,
        name: &[u8],
        out: &mut BytesMut,
        batch_start: u64,
    ) -> Option<Arc<StatementDef>> {
        if name.is_empty() {
            return None;
        }
        let def = Arc::clone(self.client.get(name)?);
        if !self.server.touch(&def) {
            self.prepare_on_server(Arc::clone(&def), true, out, batch_start);
        }
        Some(def)
    }

    fn bind(&mut self, body: &[u8], message: &[u8], out: &mut BytesMut, batch_start: u64) {
        self.ledger.set_batch_open(true);
        let mapped = frontend::split_bind(body).and_then(|(portal, statement, rest)| {
            let def = self.server_statement(statement, out, batch_start)?;
            Some((portal, def, rest))
        });
        match mapped {
            Some((portal, def, rest)) => {
                messages::bind(out, portal, def.server_name.as_bytes(), rest)
            }
            None => out.extend_from_slice(message),
        }
        self.ledger.push(Expect::Complete {
            suppress: false,
            effect: Effect::None,
        });
    }

    fn describe(&mut self, body: &[u8], message: &[u8], out: &mut BytesMut, batch_start: u64) {
        self.ledger.set_batch_open(true);
        match frontend::split_target(body) {
            Some((tag::TARGET_STATEMENT, name)) => {
                match self.server_statement(name, out, batch_start) {
                    Some(def) => messages::describe_statement(out, def.server_name.as_bytes()),
                    None => out.extend_from_slice(message),
                }
                self.ledger.push(Expect::DescribeStatement);
            }
            _ => {
                out.extend_from_slice(message);
                self.ledger.push(Expect::DescribePortal);
            }
        }
    }

    fn close(&mut self, body: &[u8], message: &[u8], out: &mut BytesMut) {
        self.ledger.set_batch_open(true);
        match frontend::split_target(body) {
            // Server statements are shared and cached: closing the client's name only
            // forgets the mapping, and the proxy answers CloseComplete itself.
            Some((tag::TARGET_STATEMENT, name)) if !name.is_empty() => {
                self.client.remove(name);
                self.ledger.push(Expect::Synthetic(CLOSE_COMPLETE));
            }
            _ => {
                out.extend_from_slice(message);
                self.ledger.push(Expect::Complete {
                    suppress: false,
                    effect: Effect::None,
                });
            }
        }
    }
}

const REFUSE_LISTEN: &str = "DO $switchyard$BEGIN RAISE EXCEPTION USING \
    ERRCODE = 'feature_not_supported', \
    MESSAGE = 'LISTEN is not supported in transaction pooling mode', \
    HINT = 'Connect through a listener with pool mode session to use LISTEN.'; END$switchyard$";

/// Whether `query` starts (after whitespace) with `word` as a whole keyword.
fn starts_with_word(query: &[u8], word: &[u8]) -> bool {
    let start = query
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(query.len());
    let rest = &query[start..];
    rest.get(..word.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(word))
        && rest
            .get(word.len())
            .is_none_or(|b| !b.is_ascii_alphanumeric() && *b != b'_')
}

/// Whether the statement mentions ALL as a word (DEALLOCATE [PREPARE] ALL).
fn contains_word_all(query: &[u8]) -> bool {
    query
        .split(|b| !b.is_ascii_alphanumeric() && *b != b'_')
        .any(|word| word.eq_ignore_ascii_case(b"all"))
}

/// Cheap pre-check before looking for SET/RESET/DISCARD in a query: it runs on
/// every simple query, so it looks at a fixed-size copy of the first word only.
fn starts_like_setting(query: &[u8]) -> bool {
    let start = query
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(query.len());
    let mut head = [0u8; 8];
    for (slot, b) in head.iter_mut().zip(&query[start..]) {
        *slot = b.to_ascii_lowercase();
    }
    head.starts_with(b"set ")
        || head.starts_with(b"set\t")
        || head.starts_with(b"reset ")
        || head.starts_with(b"discard ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    use crate::protocol::frame::Messages;
    use crate::protocol::test_message as message;

    fn parse(name: &str, query: &str) -> Vec<u8> {
        let mut body = Vec::new();
        body.put_slice(name.as_bytes());
        body.put_u8(0);
        body.put_slice(query.as_bytes());
        body.put_u8(0);
        body.put_u16(0);
        message(tag::PARSE, &body)
    }

    fn bind(statement: &str) -> Vec<u8> {
        let mut body = vec![0u8];
        body.put_slice(statement.as_bytes());
        body.put_slice(&[0, 0, 0, 0, 0, 0, 0]);
        message(tag::BIND, &body)
    }

    fn run(
        inbox: &[u8],
        client: &mut ClientStatements,
        server: &mut ServerStatements,
        ledger: &mut Ledger,
    ) -> Vec<u8> {
        let mut translator = Translator {
            ledger,
            client,
            server,
            max_prepared: 2,
            max_message: 1 << 20,
        };
        let mut inbox = BytesMut::from(inbox);
        let mut out = BytesMut::new();
        translator.run(&mut inbox, &mut out).expect("valid");
        out.to_vec()
    }

    fn tags(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut messages = Messages::new(bytes, u32::MAX as usize);
        let result = messages
            .by_ref()
            .map(|m| (m.tag, m.body.to_vec()))
            .collect();
        assert_eq!(messages.consumed(), bytes.len(), "whole messages only");
        result
    }

    #[test]
    fn a_named_statement_moves_to_a_new_server() {
        let mut client = ClientStatements::default();
        let mut first = ServerStatements::default();
        let mut ledger = Ledger::default();
        let batch = [
            parse("s1", "select $1"),
            bind("s1"),
            message(tag::EXECUTE, b"\0\0\0\0\0"),
            message(tag::SYNC, b""),
        ]
        .concat();
        let out = tags(&run(&batch, &mut client, &mut first, &mut ledger));
        let server_name = client.get(b"s1").expect("remembered").server_name.clone();
        assert_eq!(out[0].0, tag::PARSE);
        assert!(out[0].1.starts_with(server_name.as_bytes()));
        assert_eq!(out[1].0, tag::BIND);
        assert!(
            out[1].1[1..].starts_with(server_name.as_bytes()),
            "Bind names the server statement"
        );

        // Next transaction on another server: Bind alone makes the proxy prepare first.
        let mut second = ServerStatements::default();
        let mut ledger = Ledger::default();
        let batch = [
            bind("s1"),
            message(tag::EXECUTE, b"\0\0\0\0\0"),
            message(tag::SYNC, b""),
        ]
        .concat();
        let out = tags(&run(&batch, &mut client, &mut second, &mut ledger));
        assert_eq!(
            out.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            vec![tag::PARSE, tag::BIND, tag::EXECUTE, tag::SYNC]
        );
        assert!(matches!(ledger_front(&ledger), Some("suppressed complete")));

        // Same server again: nothing to prepare.
        let mut ledger = Ledger::default();
        let out = tags(&run(&batch, &mut client, &mut second, &mut ledger));
        assert_eq!(
            out.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            vec![tag::BIND, tag::EXECUTE, tag::SYNC]
        );
    }

    fn ledger_front(ledger: &Ledger) -> Option<&'static str> {
        let text = format!("{ledger:?}");
        text.contains("Complete { suppress: true")
            .then_some("suppressed complete")
    }

    #[test]
    fn parse_of_a_known_statement_and_close_are_answered_by_the_proxy() {
        let mut client = ClientStatements::default();
        let mut server = ServerStatements::default();
        let mut ledger = Ledger::default();
        run(
            &parse("a", "select 1"),
            &mut client,
            &mut server,
            &mut ledger,
        );
        let mut ledger = Ledger::default();
        let close = message(tag::CLOSE, b"Sa\0");
        let out = run(
            &[parse("b", "select 1"), close, message(tag::SYNC, b"")].concat(),
            &mut client,
            &mut server,
            &mut ledger,
        );
        assert_eq!(
            tags(&out).iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            vec![tag::SYNC]
        );
        assert!(client.get(b"a").is_none());
        assert!(client.get(b"b").is_some());
        let mut segments = Vec::new();
        ledger.flush_synthetic(&mut segments);
        assert_eq!(
            segments.len(),
            2,
            "ParseComplete and CloseComplete are owed"
        );
    }

    #[test]
    fn the_lru_limit_closes_old_statements_on_the_server() {
        let mut client = ClientStatements::default();
        let mut server = ServerStatements::default();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let mut ledger = Ledger::default();
            let out = run(
                &[parse(name, &format!("select {i}")), message(tag::SYNC, b"")].concat(),
                &mut client,
                &mut server,
                &mut ledger,
            );
            let sent: Vec<u8> = tags(&out).iter().map(|(t, _)| *t).collect();
            if i < 2 {
                assert_eq!(sent, vec![tag::PARSE, tag::SYNC]);
            } else {
                assert_eq!(
                    sent,
                    vec![tag::CLOSE, tag::PARSE, tag::SYNC],
                    "the oldest is closed to stay at max_prepared"
                );
            }
        }
        assert_eq!(server.len(), 2);
    }

    #[test]
    fn terminate_stops_translation() {
        let mut client = ClientStatements::default();
        let mut server = ServerStatements::default();
        let mut ledger = Ledger::default();
        let mut translator = Translator {
            ledger: &mut ledger,
            client: &mut client,
            server: &mut server,
            max_prepared: 10,
            max_message: 1 << 20,
        };
        let mut inbox = BytesMut::from(
            &[
                message(tag::TERMINATE, b""),
                message(tag::QUERY, b"select 1\0"),
            ]
            .concat()[..],
        );
        let mut out = BytesMut::new();
        let result = translator.run(&mut inbox, &mut out).expect("valid");
        assert!(result.terminate);
        assert!(out.is_empty());
    }

    #[test]
    fn listen_is_turned_into_a_server_side_error() {
        let mut client = ClientStatements::default();
        let mut server = ServerStatements::default();
        let mut ledger = Ledger::default();
        let out = run(
            &message(tag::QUERY, b"  LISTEN events\0"),
            &mut client,
            &mut server,
            &mut ledger,
        );
        let sent = tags(&out);
        assert_eq!(sent.len(), 1);
        assert!(String::from_utf8_lossy(&sent[0].1).contains("feature_not_supported"));
        assert!(starts_with_word(b"listen\0", b"listen"));
        assert!(!starts_with_word(b"listener_count()", b"listen"));
    }

    #[test]
    fn setting_detection() {
        assert!(starts_like_setting(b"  SET search_path TO x\0"));
        assert!(starts_like_setting(b"reset all\0"));
        assert!(!starts_like_setting(b"select 1\0"));
        assert!(!starts_like_setting(b"settings\0"));
        assert!(starts_like_setting(b"\n\tDISCARD ALL\0"));
        assert!(starts_like_setting(b"Set\tTimeZone = 'UTC'\0"));
        assert!(!starts_like_setting(b"discarded\0"));
        assert!(!starts_like_setting(b""));
    }
}
