//! The client-to-server half of a transaction-mode session: takes complete client
//! messages from the inbox and writes what the server must receive, recording in
//! the [`Ledger`] what the server will owe. Named prepared statements are mapped to
//! server names (preparing them first where this server lacks them); everything else
//! passes unchanged. Query and Parse texts are read by [`sql_scan`](super::sql_scan)
//! (never decoded or re-encoded): what each statement does is recorded with the
//! reply that will prove it ran, state the proxy cannot carry taints the server,
//! and refused statements (LISTEN, the proxy's statement names) are replaced by a
//! statement that makes the server raise the error.

use std::sync::Arc;

use bytes::BytesMut;

use super::ledger::{Effect, Expect, Ledger};
use super::sql_scan::{self, Refusal, Scan, Taint};
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
                // The text without its closing NUL (the server refuses a Query with
                // bytes after the first NUL): a literal left open must not take the
                // NUL into a value the proxy re-runs.
                let text = body.strip_suffix(b"\0").unwrap_or(body);
                let scan = self.scan(text);
                match scan.refusal {
                    Some(refusal) => {
                        // The server raises the error, which keeps transaction
                        // semantics exactly as for any failed statement.
                        messages::query(out, refusal_sql(refusal));
                        self.ledger.push(Expect::Ready {
                            actions: Vec::new(),
                        });
                    }
                    None => {
                        self.ledger.push(Expect::Ready {
                            actions: scan.actions,
                        });
                        out.extend_from_slice(message);
                    }
                }
            }
            tag::PARSE => return self.parse(body, message, out, batch_start),
            tag::BIND => self.bind(body, message, out, batch_start),
            tag::DESCRIBE => self.describe(body, message, out, batch_start),
            tag::CLOSE => self.close(body, message, out),
            tag::EXECUTE => {
                self.ledger.set_batch_open(true);
                let portal = split_cstr(body).map(|(name, _)| name).unwrap_or_default();
                let action = self.ledger.portals.get(portal);
                self.ledger.push(Expect::Execute { action });
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
                self.ledger.taint |= function_call_taint(body);
                self.ledger.push(Expect::Ready {
                    actions: Vec::new(),
                });
                out.extend_from_slice(message);
            }
            // Flush, CopyData and anything unknown (the server judges it).
            _ => out.extend_from_slice(message),
        }
        Ok(())
    }

    /// Scans a query text, recording its taints (and forgetting the server's
    /// statements if it drops them).
    fn scan(&mut self, text: &[u8]) -> Scan {
        let scan = sql_scan::scan(text);
        self.ledger.taint |= scan.taint;
        if scan.drops_statements {
            // DISCARD ALL / DEALLOCATE ALL drop the server's prepared statements
            // behind the proxy's back (including the shared sy_ ones).
            self.server.clear();
        }
        scan
    }

    fn parse(
        &mut self,
        body: &[u8],
        message: &[u8],
        out: &mut BytesMut,
        batch_start: u64,
    ) -> Result<(), OverLimit> {
        self.ledger.set_batch_open(true);
        let Some((name, rest)) = split_cstr(body) else {
            // Malformed: the server rejects it.
            self.ledger.push(Expect::Complete {
                suppress: false,
                effect: Effect::None,
            });
            out.extend_from_slice(message);
            return Ok(());
        };
        let query = split_cstr(rest).map(|(query, _)| query).unwrap_or(rest);
        // Its taints count when it runs (Bind), maybe in a later transaction.
        let scan = sql_scan::scan(query);
        let refused = scan
            .refusal
            .map(|refusal| refused_parse_body(name, refusal));
        let body = refused.as_deref().unwrap_or(body);
        let effects = scan.statement_effects();
        if name.is_empty() {
            self.ledger.portals.unnamed_statement = effects;
            self.ledger.push(Expect::Complete {
                suppress: false,
                effect: Effect::None,
            });
            match &refused {
                Some(body) => messages::parse(out, b"", &body[1..]),
                None => out.extend_from_slice(message),
            }
            return Ok(());
        }
        let def = Arc::new(StatementDef::from_parse_body(body, name.len()));
        self.client.insert(name, Arc::clone(&def), effects)?;
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
        if let Some((portal, statement, _)) = frontend::split_bind(body) {
            let effects = if statement.is_empty() {
                self.ledger.portals.unnamed_statement.clone()
            } else {
                self.client.effects(statement)
            };
            self.ledger.taint |= effects.taint;
            if effects.drops_statements {
                self.server.clear();
            }
            if !self.ledger.portals.bind(portal, effects.action) {
                self.ledger.taint |= Taint::SETTINGS;
            }
        }
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
            target => {
                if let Some((tag::TARGET_PORTAL, portal)) = target {
                    self.ledger.portals.close(portal);
                }
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

const REFUSE_PROXY_NAMES: &str = "DO $switchyard$BEGIN RAISE EXCEPTION USING \
    ERRCODE = 'insufficient_privilege', \
    MESSAGE = 'prepared statement names starting with sy_ are reserved by the proxy', \
    HINT = 'PREPARE, EXECUTE and DEALLOCATE another name.'; END$switchyard$";

/// The statement sent instead of a refused one.
fn refusal_sql(refusal: Refusal) -> &'static str {
    match refusal {
        // Notifications go to whichever server the listener happened to be on, so
        // they would be lost, or reach the next client of that server.
        Refusal::Listen => REFUSE_LISTEN,
        // Other clients run these statements: nobody may replace them.
        Refusal::ProxyNames => REFUSE_PROXY_NAMES,
    }
}

/// A Parse body (name, query, no parameter types) preparing the refusal instead:
/// executing it raises the error.
fn refused_parse_body(name: &[u8], refusal: Refusal) -> Vec<u8> {
    let sql = refusal_sql(refusal).as_bytes();
    let mut body = Vec::with_capacity(name.len() + sql.len() + 4);
    body.extend_from_slice(name);
    body.push(0);
    body.extend_from_slice(sql);
    body.push(0);
    body.extend_from_slice(&0u16.to_be_bytes());
    body
}

/// Functions a FunctionCall may name (by OID, fixed in PostgreSQL's catalog) that
/// leave session state behind: set_config, and the session-level advisory locks.
fn function_call_taint(body: &[u8]) -> Taint {
    const SET_CONFIG: u32 = 2078;
    const ADVISORY_LOCKS: [u32; 8] = [2880, 2881, 2882, 2883, 2886, 2887, 2888, 2889];
    let Some(oid) = body.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
        return Taint::default();
    };
    let oid = u32::from_be_bytes(oid);
    if oid == SET_CONFIG {
        Taint::SETTINGS
    } else if ADVISORY_LOCKS.contains(&oid) {
        Taint::ADVISORY
    } else {
        Taint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::sql_scan::Action;
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
    }

    #[test]
    fn listen_and_the_proxy_names_are_refused_in_both_protocols() {
        let cases: [(Vec<u8>, &str); 4] = [
            (
                message(tag::QUERY, b"select 1; listen x\0"),
                "feature_not_supported",
            ),
            (parse("", "LISTEN x"), "feature_not_supported"),
            (
                message(tag::QUERY, b"DEALLOCATE \"sy_0123\"\0"),
                "insufficient_privilege",
            ),
            (parse("s", "execute SY_0123"), "insufficient_privilege"),
        ];
        for (input, code) in cases {
            let mut client = ClientStatements::default();
            let mut server = ServerStatements::default();
            let mut ledger = Ledger::default();
            let out = run(&input, &mut client, &mut server, &mut ledger);
            let sent = tags(&out);
            assert_eq!(sent.len(), 1);
            assert!(String::from_utf8_lossy(&sent[0].1).contains(code), "{code}");
        }
    }

    #[test]
    fn executes_carry_the_action_of_their_statement() {
        let mut client = ClientStatements::default();
        let mut server = ServerStatements::default();
        let mut ledger = Ledger::default();
        let batch = [
            parse("", "SET search_path TO app"),
            bind(""),
            message(tag::EXECUTE, b"\0\0\0\0\0"),
            parse("named", "RESET search_path"),
            bind("named"),
            message(tag::EXECUTE, b"\0\0\0\0\0"),
            message(tag::SYNC, b""),
        ]
        .concat();
        run(&batch, &mut client, &mut server, &mut ledger);
        let text = format!("{ledger:?}");
        assert!(
            text.contains("Execute { action: Change(Set(\"search_path\", \"app\")) }"),
            "{text}"
        );
        assert!(
            text.contains("Execute { action: Change(Reset(\"search_path\")) }"),
            "{text}"
        );
        assert_eq!(
            client.effects(b"named").action,
            Action::Change(crate::session::settings::ParamChange::Reset(
                "search_path".into()
            ))
        );
    }
}
