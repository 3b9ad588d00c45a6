//! The response ledger of a transaction-mode session: what the server owes the
//! client for every message sent to it, in order. Because the proxy rewrites the
//! client's extended-protocol traffic (statements prepared under other names, Parse
//! messages it injects, Close/Parse it answers itself), the server's replies no
//! longer match the client's requests one to one; the ledger walks the server's
//! messages (by header only) against what was sent and decides, per message, to
//! forward it, swallow it, or insert a reply the proxy owes. It also knows when the
//! server is idle and can go back to the pool, and follows what the statements it
//! answers do to the session ([`TxSettings`]: settings that hold once their
//! transaction commits) and what must be reset before the server is reused
//! ([`Taint`]).

use std::collections::VecDeque;
use std::sync::Arc;

use super::settings::ParamChange;
use super::sql_scan::{Action, Taint};
use super::statements::PortalActions;
use super::tx_settings::TxSettings;
use crate::protocol::frame::{Frame, FrameError, FrameScanner, FrameVisitor};
use crate::protocol::tag;
use crate::server::statements::{ServerStatements, StatementDef};

/// What a server-side statement change does if its message fails or is skipped.
#[derive(Debug)]
pub enum Effect {
    None,
    /// A Parse we sent: the server does not have the statement if it fails.
    Prepared(Arc<StatementDef>),
    /// A Close we sent: the server still has the statement if it is skipped.
    Closed(Arc<StatementDef>),
}

/// One reply the server (or the proxy) owes the client.
#[derive(Debug)]
pub enum Expect {
    /// ParseComplete / BindComplete / CloseComplete. `suppress` for messages the
    /// proxy sent on its own behalf, whose replies the client must not see.
    Complete { suppress: bool, effect: Effect },
    /// ParameterDescription then RowDescription or NoData.
    DescribeStatement,
    /// RowDescription or NoData.
    DescribePortal,
    /// Rows, then CommandComplete, EmptyQueryResponse or PortalSuspended; the
    /// action of the statement the portal runs.
    Execute { action: Action },
    /// Everything up to ReadyForQuery (Sync, simple Query, FunctionCall). A simple
    /// query carries one action per statement, each consumed by its CommandComplete
    /// (empty when none does anything the ledger follows).
    Ready { actions: Vec<Action> },
    /// A reply the proxy makes up itself, sent when it reaches the head.
    Synthetic(&'static [u8]),
    /// Marks where the client ended a COPY (CopyDone/CopyFail) before the server
    /// had said it entered copy-in mode; owes nothing.
    CopyEnd,
}

/// Output of processing one chunk of server bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Segment {
    /// Forward this range of the chunk.
    Forward(usize, usize),
    /// Send these bytes the proxy made up.
    Insert(&'static [u8]),
}

/// Things the session must apply after a chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A ParameterStatus body the server sent (forwarded to the client too).
    ParameterStatus(Vec<u8>),
    /// A tracked SET/RESET now holds for the client's later transactions (it ran
    /// outside a transaction block, or its transaction committed), or a followed
    /// parameter's value as the server reported it.
    ParamCommitted(ParamChange),
    /// A server prepared this statement without error.
    Prepared(Arc<StatementDef>),
    /// The client's own Parse of this statement failed or was skipped: the client
    /// does not have it.
    PrepareFailed(Arc<StatementDef>),
    /// The server sent an ErrorResponse with this SQLSTATE (counted in metrics).
    Error(String),
}

#[derive(Debug)]
pub struct Ledger {
    queue: VecDeque<Expect>,
    /// Transaction status from the last ReadyForQuery.
    status: u8,
    /// The client sent extended-protocol messages without the closing Sync yet.
    batch_open: bool,
    /// An ErrorResponse arrived while the head was a Ready entry.
    error_in_ready: bool,
    /// Whether the message in progress (started in an earlier chunk) is forwarded.
    forwarding: bool,
    /// Session state the proxy does not carry (untracked settings, temporary
    /// tables, advisory locks, held cursors, SQL-level or dropped prepared
    /// statements): reset before another client uses the server.
    pub taint: Taint,
    /// Settings made in the current transaction, pending until it ends.
    pub settings: TxSettings,
    /// The action of the CommandComplete being read.
    completing: Option<Action>,
    /// Statements of the head Ready entry already answered.
    answered: usize,
    /// Actions of the unnamed statement and of portals bound in this attach.
    pub portals: PortalActions,
    /// The server said something after the client was owed nothing (typically a
    /// FATAL as it shuts down): swallowed, and the server is not reused.
    pub unsolicited: bool,
    /// The last server message was an ErrorResponse (so a close that follows it
    /// has been explained to the client).
    pub last_was_error: bool,
    /// Requests ending in ReadyForQuery sent in this attach.
    pub requests: u32,
    /// The server is in copy-in mode (it ignores Sync and Flush until the client's
    /// CopyDone or CopyFail).
    copy_in: bool,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            queue: VecDeque::new(),
            status: tag::STATUS_IDLE,
            batch_open: false,
            error_in_ready: false,
            forwarding: true,
            taint: Taint::default(),
            settings: TxSettings::default(),
            completing: None,
            answered: 0,
            portals: PortalActions::default(),
            unsolicited: false,
            last_was_error: false,
            requests: 0,
            copy_in: false,
        }
    }
}

impl Ledger {
    /// Back to the state of a fresh attach, keeping the queue's allocation;
    /// `nonstandard_strings`: the client's `standard_conforming_strings` is off.
    pub fn reset(&mut self, nonstandard_strings: bool) {
        self.queue.clear();
        let queue = std::mem::take(&mut self.queue);
        *self = Ledger {
            queue,
            ..Ledger::default()
        };
        self.settings.nonstandard_strings = nonstandard_strings;
    }

    /// A reply the proxy owes is at the head (nothing from the server comes first).
    pub fn owes_synthetic_now(&self) -> bool {
        matches!(self.queue.front(), Some(Expect::Synthetic(_)))
    }

    pub fn push(&mut self, expect: Expect) {
        if matches!(expect, Expect::Ready { .. }) {
            self.requests += 1;
        }
        self.queue.push_back(expect);
    }

    pub fn set_batch_open(&mut self, open: bool) {
        self.batch_open = open;
    }

    /// The client sent Sync: it is owed a ReadyForQuery unless the server is in
    /// copy-in mode, where PostgreSQL ignores Sync.
    pub fn client_sync(&mut self) {
        if !self.copy_in {
            self.push(Expect::Ready {
                actions: Vec::new(),
            });
        }
    }

    /// The client sent CopyDone or CopyFail.
    pub fn client_copy_end(&mut self) {
        if self.copy_in {
            self.copy_in = false;
        } else {
            self.push(Expect::CopyEnd);
        }
    }

    /// The server entered copy-in mode: Syncs the client already sent after the
    /// COPY started (up to its CopyDone, if that was sent too) get no reply.
    fn server_copy_in(&mut self) {
        let mut index = 1;
        while index < self.queue.len() {
            match self.queue[index] {
                Expect::Ready { .. } => {
                    self.queue.remove(index);
                }
                Expect::CopyEnd => {
                    self.queue.remove(index);
                    return;
                }
                _ => index += 1,
            }
        }
        self.copy_in = true;
    }

    /// What must be reset before another client may use the server.
    pub fn reset_needed(&self) -> Taint {
        if self.settings.lost {
            self.taint | Taint::SETTINGS
        } else {
            self.taint
        }
    }

    /// The server must be reset before another client may use it.
    pub fn needs_reset(&self) -> bool {
        !self.reset_needed().is_empty()
    }

    /// Nothing owed, no transaction, no half-sent batch: the server can be released.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.status == tag::STATUS_IDLE && !self.batch_open
    }

    /// Transaction status from the last ReadyForQuery.
    pub fn status(&self) -> u8 {
        self.status
    }

    pub fn owes_nothing(&self) -> bool {
        self.queue.is_empty()
    }

    /// Emits the proxy-made replies now at the head of the queue.
    pub fn flush_synthetic(&mut self, segments: &mut Vec<Segment>) {
        while let Some(Expect::Synthetic(bytes)) = self.queue.front() {
            segments.push(Segment::Insert(bytes));
            self.queue.pop_front();
        }
    }

    /// Walks a chunk of server bytes, producing what to send the client.
    pub fn process(
        &mut self,
        chunk: &[u8],
        scanner: &mut FrameScanner,
        statements: &mut ServerStatements,
        segments: &mut Vec<Segment>,
        events: &mut Vec<Event>,
    ) -> Result<(), FrameError> {
        let run_start = (!scanner.at_boundary() && self.forwarding).then_some(0);
        let mut walker = Walker {
            ledger: self,
            statements,
            segments,
            events,
            run_start,
        };
        scanner.scan_with(chunk, &mut walker)?;
        if let Some(start) = walker.run_start {
            if start < chunk.len() {
                walker.segments.push(Segment::Forward(start, chunk.len()));
            }
        }
        Ok(())
    }

    /// Decides, at a message's first byte, whether it is forwarded.
    fn on_start(
        &mut self,
        tag: u8,
        statements: &mut ServerStatements,
        events: &mut Vec<Event>,
    ) -> bool {
        while matches!(self.queue.front(), Some(Expect::CopyEnd)) {
            self.queue.pop_front();
        }
        if tag == tag::COPY_IN_RESPONSE {
            self.server_copy_in();
        } else if tag == tag::ERROR_RESPONSE {
            // An error ends copy-in mode on the server side.
            self.copy_in = false;
        }
        let Some(head) = self.queue.front() else {
            return true;
        };
        match (head, tag) {
            (
                Expect::Complete { .. },
                tag::PARSE_COMPLETE | tag::BIND_COMPLETE | tag::CLOSE_COMPLETE,
            ) => match self.queue.pop_front() {
                Some(Expect::Complete { suppress, effect }) => {
                    if let (tag::PARSE_COMPLETE, Effect::Prepared(def)) = (tag, effect) {
                        events.push(Event::Prepared(def));
                    }
                    !suppress
                }
                _ => true,
            },
            (Expect::DescribeStatement, tag::ROW_DESCRIPTION | tag::NO_DATA)
            | (Expect::DescribePortal, tag::ROW_DESCRIPTION | tag::NO_DATA) => {
                self.queue.pop_front();
                true
            }
            (
                Expect::Execute { .. },
                tag::COMMAND_COMPLETE | tag::EMPTY_QUERY_RESPONSE | tag::PORTAL_SUSPENDED,
            ) => {
                if let Some(Expect::Execute { action }) = self.queue.pop_front() {
                    if tag == tag::COMMAND_COMPLETE {
                        self.completing = Some(action);
                    }
                }
                true
            }
            (Expect::Ready { .. }, tag::COMMAND_COMPLETE) => {
                if let Some(Expect::Ready { actions }) = self.queue.front_mut() {
                    let action = actions
                        .get_mut(self.answered)
                        .map(std::mem::take)
                        .unwrap_or_default();
                    self.completing = Some(action);
                }
                self.answered += 1;
                true
            }
            (Expect::Ready { .. }, tag::ERROR_RESPONSE) => {
                self.error_in_ready = true;
                self.settings.error();
                true
            }
            (_, tag::ERROR_RESPONSE) => {
                self.settings.error();
                self.fail_batch(statements, events);
                true
            }
            _ => true,
        }
    }

    /// After an error in an extended-protocol batch the server skips everything up
    /// to Sync: undo what the skipped messages would have done.
    fn fail_batch(&mut self, statements: &mut ServerStatements, events: &mut Vec<Event>) {
        while let Some(head) = self.queue.front() {
            if matches!(head, Expect::Ready { .. }) {
                break;
            }
            if let Some(Expect::Complete { effect, suppress }) = self.queue.pop_front() {
                match effect {
                    Effect::Prepared(def) => {
                        statements.remove(&def.server_name);
                        if !suppress {
                            events.push(Event::PrepareFailed(def));
                        }
                    }
                    Effect::Closed(def) => statements.insert(def),
                    Effect::None => {}
                }
            }
        }
    }

    fn on_ready(&mut self, status: u8, events: &mut Vec<Event>) {
        // Pop through the Ready entry this ReadyForQuery answers; anything before it
        // was never answered (which only a confused server causes).
        while let Some(expect) = self.queue.pop_front() {
            if matches!(expect, Expect::Ready { .. }) {
                break;
            }
        }
        self.answered = 0;
        self.completing = None;
        self.error_in_ready = false;
        self.status = status;
        let mut changes = Vec::new();
        self.settings.ready(status, &mut changes);
        events.extend(changes.into_iter().map(Event::ParamCommitted));
    }

    /// A CommandComplete ended: what its statement did now holds, if it does.
    fn on_command_complete(&mut self, command_tag: &[u8], events: &mut Vec<Event>) {
        let action = self.completing.take().unwrap_or_default();
        let mut changes = Vec::new();
        self.settings.completed(action, command_tag, &mut changes);
        events.extend(changes.into_iter().map(Event::ParamCommitted));
    }
}

struct Walker<'a> {
    ledger: &'a mut Ledger,
    statements: &'a mut ServerStatements,
    segments: &'a mut Vec<Segment>,
    events: &'a mut Vec<Event>,
    run_start: Option<usize>,
}

impl Walker<'_> {
    fn close_run(&mut self, at: usize) {
        if let Some(start) = self.run_start.take() {
            if start < at {
                self.segments.push(Segment::Forward(start, at));
            }
        }
    }
}

impl FrameVisitor for Walker<'_> {
    fn start(&mut self, tag: u8, at: usize) {
        let asynchronous = matches!(
            tag,
            tag::NOTICE_RESPONSE | tag::NOTIFICATION_RESPONSE | tag::PARAMETER_STATUS
        );
        let forward = if self.ledger.is_idle() {
            // Nothing is owed and no transaction is open: this belongs to the
            // server connection, not to the client.
            self.ledger.unsolicited = true;
            false
        } else if asynchronous {
            true
        } else {
            if matches!(self.ledger.queue.front(), Some(Expect::Synthetic(_))) {
                self.close_run(at);
                self.ledger.flush_synthetic(self.segments);
            }
            self.ledger.on_start(tag, self.statements, self.events)
        };
        self.ledger.forwarding = forward;
        match (forward, self.run_start.is_some()) {
            (true, false) => self.run_start = Some(at),
            (false, true) => self.close_run(at),
            _ => {}
        }
    }

    fn end(&mut self, frame: Frame<'_>) {
        self.ledger.last_was_error = frame.tag == tag::ERROR_RESPONSE && self.ledger.forwarding;
        match frame.tag {
            tag::PARAMETER_STATUS => {
                if let Ok((name, value)) =
                    crate::protocol::backend::parse_parameter_status(frame.body)
                {
                    self.ledger.settings.reported(name, value);
                }
                self.events
                    .push(Event::ParameterStatus(frame.body.to_vec()))
            }
            tag::COMMAND_COMPLETE => self.ledger.on_command_complete(frame.body, self.events),
            tag::ERROR_RESPONSE => self.events.push(Event::Error(
                crate::protocol::backend::parse_error_fields(frame.body).code,
            )),
            tag::READY_FOR_QUERY => {
                let status = frame.body.first().copied().unwrap_or(tag::STATUS_IDLE);
                self.ledger.on_ready(status, self.events);
            }
            _ => {}
        }
        if matches!(self.ledger.queue.front(), Some(Expect::Synthetic(_))) {
            if self.ledger.forwarding {
                self.close_run(frame.end);
            }
            self.ledger.flush_synthetic(self.segments);
        }
    }
}

/// Message types whose bodies the ledger reads: ReadyForQuery, ParameterStatus,
/// ErrorResponse (for its SQLSTATE) and CommandComplete (its command tag).
pub fn capture_tags(tag: u8) -> bool {
    matches!(
        tag,
        tag::READY_FOR_QUERY | tag::PARAMETER_STATUS | tag::ERROR_RESPONSE | tag::COMMAND_COMPLETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::{CLOSE_COMPLETE, PARSE_COMPLETE};

    use crate::protocol::test_message as message;

    fn def(query: &str) -> Arc<StatementDef> {
        let mut body = b"s\0".to_vec();
        body.extend_from_slice(query.as_bytes());
        body.extend_from_slice(&[0, 0, 0]);
        Arc::new(StatementDef::from_parse_body(&body, 1))
    }

    /// Feeds `server` in chunks of `size` and returns what the client receives.
    fn client_sees(
        ledger: &mut Ledger,
        statements: &mut ServerStatements,
        server: &[u8],
        size: usize,
    ) -> (Vec<u8>, Vec<Event>) {
        let mut scanner = FrameScanner::new(1 << 20, capture_tags);
        let mut out = Vec::new();
        let mut events = Vec::new();
        for chunk in server.chunks(size) {
            let mut segments = Vec::new();
            ledger
                .process(chunk, &mut scanner, statements, &mut segments, &mut events)
                .expect("valid");
            for segment in segments {
                match segment {
                    Segment::Forward(a, b) => out.extend_from_slice(&chunk[a..b]),
                    Segment::Insert(bytes) => out.extend_from_slice(bytes),
                }
            }
        }
        (out, events)
    }

    #[test]
    fn injected_parse_is_swallowed_and_skipped_parse_is_answered_in_order() {
        // Client: Parse(a, already prepared) Bind Execute Sync; the proxy also injected
        // a Parse for a statement the Bind needs.
        let server = [
            message(tag::PARSE_COMPLETE, b""), // reply to the injected Parse
            message(tag::BIND_COMPLETE, b""),
            message(tag::DATA_ROW, b"row"),
            message(tag::COMMAND_COMPLETE, b"SELECT 1\0"),
            message(tag::READY_FOR_QUERY, b"I"),
        ]
        .concat();
        let expected = [
            PARSE_COMPLETE.to_vec(),
            message(tag::BIND_COMPLETE, b""),
            message(tag::DATA_ROW, b"row"),
            message(tag::COMMAND_COMPLETE, b"SELECT 1\0"),
            message(tag::READY_FOR_QUERY, b"I"),
        ]
        .concat();
        for size in 1..=server.len() {
            let mut ledger = Ledger::default();
            let mut statements = ServerStatements::default();
            ledger.push(Expect::Synthetic(PARSE_COMPLETE));
            ledger.push(Expect::Complete {
                suppress: true,
                effect: Effect::Prepared(def("select 1")),
            });
            ledger.push(Expect::Complete {
                suppress: false,
                effect: Effect::None,
            });
            ledger.push(Expect::Execute {
                action: Action::Other,
            });
            ledger.push(Expect::Ready {
                actions: Vec::new(),
            });
            let (out, _) = client_sees(&mut ledger, &mut statements, &server, size);
            assert_eq!(out, expected, "chunk size {size}");
            assert!(ledger.is_idle());
        }
    }

    #[test]
    fn an_error_skips_to_sync_and_undoes_skipped_parses() {
        let statement = def("select broken");
        let mut statements = ServerStatements::default();
        statements.insert(Arc::clone(&statement));
        let mut ledger = Ledger::default();
        ledger.push(Expect::Complete {
            suppress: false,
            effect: Effect::None,
        }); // Bind fails
        ledger.push(Expect::Complete {
            suppress: true,
            effect: Effect::Prepared(Arc::clone(&statement)),
        });
        ledger.push(Expect::Synthetic(CLOSE_COMPLETE)); // skipped by the server, so not sent
        ledger.push(Expect::Execute {
            action: Action::Other,
        });
        ledger.push(Expect::Ready {
            actions: Vec::new(),
        });
        let server = [
            message(tag::ERROR_RESPONSE, b"SERROR\0\0"),
            message(tag::READY_FOR_QUERY, b"I"),
        ]
        .concat();
        let (out, _) = client_sees(&mut ledger, &mut statements, &server, 3);
        assert_eq!(out, server);
        assert!(!statements.touch(&statement), "the skipped Parse never ran");
        assert!(ledger.is_idle());
    }

    #[test]
    fn bytes_after_the_final_ready_are_swallowed_and_taint_the_server() {
        let mut ledger = Ledger::default();
        let mut statements = ServerStatements::default();
        ledger.push(Expect::Ready {
            actions: Vec::new(),
        });
        let answer = [
            message(tag::COMMAND_COMPLETE, b"INSERT 0 1\0"),
            message(tag::READY_FOR_QUERY, b"I"),
        ]
        .concat();
        let server = [
            answer.clone(),
            message(tag::ERROR_RESPONSE, b"SFATAL\0C57P01\0\0"),
        ]
        .concat();
        let (out, _) = client_sees(&mut ledger, &mut statements, &server, 64);
        assert_eq!(out, answer, "the shutdown notice is not the client's");
        assert!(ledger.unsolicited);
        assert!(ledger.is_idle());
    }

    #[test]
    fn a_synthetic_reply_with_nothing_else_owed_is_flushed_at_once() {
        let mut ledger = Ledger::default();
        ledger.push(Expect::Synthetic(CLOSE_COMPLETE));
        let mut segments = Vec::new();
        ledger.flush_synthetic(&mut segments);
        assert_eq!(segments, vec![Segment::Insert(CLOSE_COMPLETE)]);
        assert!(ledger.owes_nothing());
    }

    #[test]
    fn tracked_set_holds_when_it_ran_outside_a_transaction_without_error() {
        let change = ParamChange::Set("search_path".into(), "x".into());
        let mut statements = ServerStatements::default();
        let reply = |status: &[u8]| {
            [
                message(tag::COMMAND_COMPLETE, b"SET\0"),
                message(tag::READY_FOR_QUERY, status),
            ]
            .concat()
        };

        let mut ledger = Ledger::default();
        ledger.push(Expect::Ready {
            actions: vec![Action::Change(change.clone())],
        });
        let (_, events) = client_sees(&mut ledger, &mut statements, &reply(b"I"), 64);
        assert_eq!(events, vec![Event::ParamCommitted(change.clone())]);

        let mut ledger = Ledger::default();
        ledger.push(Expect::Ready {
            actions: vec![Action::Change(change.clone())],
        });
        let (_, events) = client_sees(&mut ledger, &mut statements, &reply(b"T"), 64);
        assert!(events.is_empty(), "pending until the transaction ends");
        assert!(!ledger.needs_reset());

        let mut ledger = Ledger::default();
        ledger.push(Expect::Ready {
            actions: vec![Action::Change(change)],
        });
        let failed = [
            message(tag::COMMAND_COMPLETE, b"SET\0"),
            message(tag::ERROR_RESPONSE, b"SERROR\0\0"),
            message(tag::READY_FOR_QUERY, b"I"),
        ]
        .concat();
        let (_, events) = client_sees(&mut ledger, &mut statements, &failed, 64);
        assert_eq!(
            events,
            vec![Event::Error(String::new())],
            "only the error, for metrics"
        );
    }

    #[test]
    fn syncs_sent_during_copy_in_get_no_reply() {
        let reply = [
            message(tag::BIND_COMPLETE, b""),
            message(tag::COPY_IN_RESPONSE, b"\0\0\0"),
            message(tag::COMMAND_COMPLETE, b"COPY 3\0"),
            message(tag::READY_FOR_QUERY, b"I"),
        ]
        .concat();
        // tokio-postgres: Bind Execute Sync, data, CopyDone Sync - all before the
        // proxy has seen CopyInResponse, or Sync and CopyDone after it.
        for early in [true, false] {
            let mut ledger = Ledger::default();
            let mut statements = ServerStatements::default();
            ledger.push(Expect::Complete {
                suppress: false,
                effect: Effect::None,
            });
            ledger.push(Expect::Execute {
                action: Action::Other,
            });
            ledger.client_sync();
            if early {
                ledger.client_copy_end();
                ledger.client_sync();
                let (out, _) = client_sees(&mut ledger, &mut statements, &reply, 4);
                assert_eq!(out, reply);
            } else {
                let (first, rest) = reply.split_at(5 + 8);
                client_sees(&mut ledger, &mut statements, first, 64);
                ledger.client_sync(); // ignored by the server in copy-in mode
                ledger.client_copy_end();
                ledger.client_sync();
                client_sees(&mut ledger, &mut statements, rest, 64);
            }
            assert!(ledger.is_idle(), "early={early}: {ledger:?}");
        }
    }

    #[test]
    fn asynchronous_messages_pass_without_consuming_the_ledger() {
        let mut ledger = Ledger::default();
        let mut statements = ServerStatements::default();
        ledger.push(Expect::Complete {
            suppress: true,
            effect: Effect::None,
        });
        ledger.push(Expect::Ready {
            actions: Vec::new(),
        });
        let server = [
            message(tag::NOTICE_RESPONSE, b"SNOTICE\0\0"),
            message(tag::PARAMETER_STATUS, b"TimeZone\0UTC\0"),
            message(tag::PARSE_COMPLETE, b""),
            message(tag::READY_FOR_QUERY, b"T"),
        ]
        .concat();
        let (out, events) = client_sees(&mut ledger, &mut statements, &server, 7);
        let expected = [
            message(tag::NOTICE_RESPONSE, b"SNOTICE\0\0"),
            message(tag::PARAMETER_STATUS, b"TimeZone\0UTC\0"),
            message(tag::READY_FOR_QUERY, b"T"),
        ]
        .concat();
        assert_eq!(out, expected);
        assert_eq!(
            events,
            vec![Event::ParameterStatus(b"TimeZone\0UTC\0".to_vec())]
        );
        assert!(!ledger.is_idle(), "in a transaction");
    }
}
