//! What the statements of a client's query text do to the session beyond their
//! transaction, as far as transaction pooling cares. Each statement is classified
//! into an [`Action`] the ledger applies when the server confirms the statement ran
//! (a tracked SET/RESET, a savepoint operation), [`Taint`]s that make the server
//! need a reset before another client may use it (state the proxy cannot carry:
//! `set_config` not provably local, temporary tables, session advisory locks,
//! WITH HOLD cursors, SQL-level PREPARE, DO blocks and CALL), and [`Refusal`]s (LISTEN, and
//! SQL-level use of the proxy's own statement names). Pure; the text is only read
//! (see [`sql_lex`](super::sql_lex)), and a query of plain statements allocates
//! nothing.

use super::settings::ParamChange;
use super::sql_lex::{Kind, Lexer, Reading, Splitter, Token};
use super::sql_prefilter::may_touch_session;
use crate::server::params::is_identifier;

/// What a statement does, applied when its CommandComplete arrives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Action {
    #[default]
    Other,
    /// A session-level SET/RESET the proxy can carry to the client's next server.
    Change(ParamChange),
    /// `SAVEPOINT name`, `ROLLBACK TO [SAVEPOINT] name`, `RELEASE [SAVEPOINT] name`
    /// (names as PostgreSQL folds them).
    Savepoint(Box<[u8]>),
    RollbackTo(Box<[u8]>),
    Release(Box<[u8]>),
    /// A statement that may change settings the proxy does not follow (a
    /// `set_config` not provably local, a SET form not understood, DO, CALL):
    /// where it falls among the tracked changes decides whether a value the server
    /// reports afterwards came from a RESET before it or from the statement itself.
    /// With the one parameter it may change, when that is known (a single
    /// `set_config` naming it in a literal), lowercased.
    Untracked(Option<Box<str>>),
}

/// Session state left on a server that must be cleared before reuse (a bit set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Taint(u8);

impl Taint {
    /// Settings changed in ways the proxy does not track: `SET SESSION
    /// AUTHORIZATION DEFAULT; RESET ALL`.
    pub const SETTINGS: Taint = Taint(1);
    /// Temporary tables: `DISCARD TEMP`.
    pub const TEMP: Taint = Taint(2);
    /// Session-level advisory locks: `SELECT pg_advisory_unlock_all()`.
    pub const ADVISORY: Taint = Taint(4);
    /// WITH HOLD cursors: `CLOSE ALL`.
    pub const CURSORS: Taint = Taint(8);
    /// SQL-level prepared statements (or the proxy's were dropped): `DEALLOCATE ALL`.
    pub const STATEMENTS: Taint = Taint(16);

    pub fn contains(self, other: Taint) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Taint {
    type Output = Taint;
    fn bitor(self, other: Taint) -> Taint {
        Taint(self.0 | other.0)
    }
}

impl std::ops::BitOrAssign for Taint {
    fn bitor_assign(&mut self, other: Taint) {
        self.0 |= other.0;
    }
}

/// Statements refused in transaction mode (the server raises the error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Notifications would reach whichever client next uses the server.
    Listen,
    /// PREPARE / EXECUTE / DEALLOCATE of a name in the proxy's `sy_` namespace.
    ProxyNames,
}

/// What a query text does.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// One action per statement, in order; empty when every statement is
    /// [`Action::Other`] (the common case, which allocates nothing).
    pub actions: Vec<Action>,
    pub taint: Taint,
    pub refusal: Option<Refusal>,
    /// DISCARD ALL or DEALLOCATE ALL: the server forgets every prepared statement,
    /// the proxy's shared ones included.
    pub drops_statements: bool,
}

/// What running one prepared statement does (an extended-protocol Parse holds one
/// statement): kept with the statement, applied each time a portal is bound to it,
/// since it may run in a later transaction on another server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatementEffects {
    pub action: Action,
    pub taint: Taint,
    pub drops_statements: bool,
}

impl StatementEffects {
    pub fn is_none(&self) -> bool {
        *self == StatementEffects::default()
    }
}

impl Scan {
    /// The effects of a single-statement text (an extended-protocol Parse).
    pub fn statement_effects(mut self) -> StatementEffects {
        let action = if self.actions.len() == 1 {
            self.actions.pop().unwrap_or_default()
        } else {
            Action::Other
        };
        StatementEffects {
            action,
            taint: self.taint,
            drops_statements: self.drops_statements,
        }
    }
}

/// Classifies every statement of `sql`.
pub fn scan(sql: &[u8]) -> Scan {
    // Most application queries mention none of the words the classifier acts on;
    // for them the answer is known without lexing (about 2,900 instructions per
    // pgbench select saved).
    if !may_touch_session(sql) {
        return Scan::default();
    }
    scan_statements(sql)
}

fn scan_statements(sql: &[u8]) -> Scan {
    let mut lexer = Lexer::new(sql);
    let mut result = scan_tokens(sql, &mut lexer);
    if lexer.saw_backslash() {
        // With standard_conforming_strings off, or in a client encoding whose
        // characters may end in 0x5c (the proxy knows neither of the session), a
        // backslash may escape a quote or not, and the text splits into other
        // statements: whatever another reading runs is reset or refused too. The
        // actions stay those of the standard reading; where they disagree, the
        // server is reset so a SET only another reading sees cannot stay behind.
        for reading in Reading::OTHERS {
            let other = scan_tokens(sql, &mut Lexer::with_reading(sql, reading));
            if other.actions != result.actions {
                result.taint |= Taint::SETTINGS;
            }
            result.taint |= other.taint;
            result.refusal = result.refusal.or(other.refusal);
            result.drops_statements |= other.drops_statements;
        }
    }
    result
}

fn scan_tokens(sql: &[u8], lexer: &mut Lexer<'_>) -> Scan {
    let mut result = Scan::default();
    let mut splitter = Splitter::default();
    let mut statement = Statement::default();
    let mut count = 0usize;
    let mut finish = |statement: &mut Statement, result: &mut Scan| {
        if statement.tokens == 0 {
            return;
        }
        let action = statement.finish(sql, result);
        if action != Action::Other && result.actions.len() < count {
            result.actions.resize(count, Action::Other);
        }
        if !result.actions.is_empty() || action != Action::Other {
            result.actions.push(action);
        }
        count += 1;
        *statement = Statement::default();
    };
    for token in lexer {
        if splitter.ends_statement(&token, sql) {
            finish(&mut statement, &mut result);
        } else {
            statement.feed(token, sql);
        }
    }
    finish(&mut statement, &mut result);
    result
}

const HEAD: usize = 10;

/// The word before the current token, where it matters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Prev {
    #[default]
    None,
    With,
    Into,
    /// PREPARE, EXECUTE, DEALLOCATE [PREPARE]: a statement name follows.
    StatementVerb,
    Deallocate,
}

/// A `set_config(...)` call being read: local only if its third argument is a
/// literal true.
#[derive(Debug, Default, Clone, Copy)]
enum SetConfig {
    #[default]
    Off,
    AwaitParen,
    Args {
        depth: u32,
        commas: u32,
        /// Tokens of the first argument, and the span of the last string literal
        /// among them (the parameter's name when it is the only token).
        first_tokens: u32,
        first_literal: Option<(usize, usize)>,
        third_tokens: u32,
        third_true: bool,
    },
}

/// Which parameters the non-local `set_config` calls of a statement name.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Target {
    #[default]
    None,
    /// One call, naming the parameter in this string literal.
    One(usize, usize),
    /// Several calls, or a name that is not a literal.
    Unknown,
}

#[derive(Default)]
struct Statement {
    head: [Option<Token>; HEAD],
    tokens: usize,
    last_end: usize,
    prev: Prev,
    set_config: SetConfig,
    target: Target,
    taint: Taint,
    with_hold: bool,
    into_temp: bool,
    proxy_names: bool,
}

fn inner_ident<'a>(token: &Token, sql: &'a [u8]) -> &'a [u8] {
    let text = token.text(sql);
    match token.kind {
        Kind::Quoted => text
            .get(1..text.len().saturating_sub(1))
            .unwrap_or_default(),
        _ => text,
    }
}

const ADVISORY_LOCKS: [&[u8]; 4] = [
    b"pg_advisory_lock",
    b"pg_advisory_lock_shared",
    b"pg_try_advisory_lock",
    b"pg_try_advisory_lock_shared",
];

impl Statement {
    fn feed(&mut self, token: Token, sql: &[u8]) {
        if let Some(slot) = self.head.get_mut(self.tokens) {
            *slot = Some(token);
        }
        self.tokens += 1;
        self.last_end = token.end;
        self.feed_set_config(&token, sql);
        if !matches!(token.kind, Kind::Word | Kind::Quoted) {
            self.prev = Prev::None;
            return;
        }
        let ident = inner_ident(&token, sql);
        let is = |keyword: &[u8]| token.kind == Kind::Word && ident.eq_ignore_ascii_case(keyword);
        let prev = std::mem::take(&mut self.prev);
        if matches!(prev, Prev::StatementVerb | Prev::Deallocate)
            && ident
                .get(..3)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"sy_"))
        {
            self.proxy_names = true;
        }
        self.with_hold |= prev == Prev::With && is(b"hold");
        self.into_temp |= prev == Prev::Into && (is(b"temp") || is(b"temporary"));
        self.prev = if is(b"with") {
            Prev::With
        } else if is(b"into") {
            Prev::Into
        } else if is(b"deallocate") {
            Prev::Deallocate
        } else if is(b"execute") || is(b"prepare") {
            Prev::StatementVerb
        } else {
            Prev::None
        };
        if ident.eq_ignore_ascii_case(b"pg_temp") {
            self.taint |= Taint::TEMP;
        } else if ADVISORY_LOCKS.iter().any(|f| ident.eq_ignore_ascii_case(f)) {
            self.taint |= Taint::ADVISORY;
        } else if ident.eq_ignore_ascii_case(b"set_config") {
            if !matches!(self.set_config, SetConfig::Off) {
                self.taint |= Taint::SETTINGS;
            }
            self.set_config = SetConfig::AwaitParen;
        }
    }

    fn feed_set_config(&mut self, token: &Token, sql: &[u8]) {
        self.set_config = match (self.set_config, token.kind) {
            (SetConfig::Off, _) => SetConfig::Off,
            (SetConfig::AwaitParen, Kind::Punct(b'(')) => SetConfig::Args {
                depth: 1,
                commas: 0,
                first_tokens: 0,
                first_literal: None,
                third_tokens: 0,
                third_true: false,
            },
            (SetConfig::AwaitParen, _) => SetConfig::AwaitParen,
            (
                SetConfig::Args {
                    depth,
                    commas,
                    mut first_tokens,
                    mut first_literal,
                    third_tokens,
                    third_true,
                },
                kind,
            ) => {
                let (depth, commas) = match kind {
                    Kind::Punct(b'(') => (depth + 1, commas),
                    Kind::Punct(b')') => (depth - 1, commas),
                    Kind::Punct(b',') if depth == 1 => (depth, commas + 1),
                    _ => (depth, commas),
                };
                if commas == 0 && depth >= 1 {
                    first_tokens += 1;
                    if kind == Kind::Str {
                        first_literal = Some((token.start, token.end));
                    }
                }
                if depth == 0 {
                    let local = commas == 2 && third_tokens == 1 && third_true;
                    if !local {
                        self.taint |= Taint::SETTINGS;
                        self.target = match (self.target, first_literal) {
                            (Target::None, Some((start, end))) if first_tokens == 1 => {
                                Target::One(start, end)
                            }
                            _ => Target::Unknown,
                        };
                    }
                    SetConfig::Off
                } else if commas == 2 && !matches!(kind, Kind::Punct(b',')) {
                    let text = token.text(sql);
                    let literal_true = match kind {
                        Kind::Word => text.eq_ignore_ascii_case(b"true"),
                        Kind::Str => [b"'true'".as_slice(), b"'t'", b"'on'"]
                            .iter()
                            .any(|t| text.eq_ignore_ascii_case(t)),
                        _ => false,
                    };
                    SetConfig::Args {
                        depth,
                        commas,
                        first_tokens,
                        first_literal,
                        third_tokens: third_tokens + 1,
                        third_true: literal_true,
                    }
                } else {
                    SetConfig::Args {
                        depth,
                        commas,
                        first_tokens,
                        first_literal,
                        third_tokens,
                        third_true,
                    }
                }
            }
        };
    }

    /// The statement is complete: its action, with taints and refusals added to
    /// `result`.
    fn finish(&mut self, sql: &[u8], result: &mut Scan) -> Action {
        if !matches!(self.set_config, SetConfig::Off) {
            // set_config( ... never closed: the server rejects it, but be safe.
            self.taint |= Taint::SETTINGS;
        }
        let words = Head {
            tokens: &self.head,
            count: self.tokens,
            sql,
            last_end: self.last_end,
        };
        let (mut action, taint) = words.classify(self);
        if action == Action::Other && (self.taint | taint).contains(Taint::SETTINGS) {
            // Only set_config changed settings: it names the one it changes.
            let named = match self.target {
                Target::One(start, end) if !taint.contains(Taint::SETTINGS) => {
                    literal_name(sql.get(start..end).unwrap_or_default())
                }
                _ => None,
            };
            action = Action::Untracked(named);
        }
        if self.proxy_names {
            result.refusal = Some(Refusal::ProxyNames);
        }
        result.taint |= self.taint | taint;
        if words.first_is(b"listen") {
            result.refusal = Some(Refusal::Listen);
        }
        if words.first_is(b"discard") && words.is(1, b"all")
            || words.first_is(b"deallocate")
                && (words.is(1, b"all") || words.is(1, b"prepare") && words.is(2, b"all"))
        {
            result.drops_statements = true;
            result.taint |= Taint::STATEMENTS;
        }
        action
    }
}

/// The first tokens of a statement.
struct Head<'a> {
    tokens: &'a [Option<Token>; HEAD],
    count: usize,
    sql: &'a [u8],
    last_end: usize,
}

impl Head<'_> {
    fn get(&self, i: usize) -> Option<Token> {
        self.tokens.get(i).copied().flatten()
    }

    fn is(&self, i: usize, keyword: &[u8]) -> bool {
        self.get(i).is_some_and(|t| t.is(self.sql, keyword))
    }

    fn first_is(&self, keyword: &[u8]) -> bool {
        self.is(0, keyword)
    }

    /// Whether token `i` is the last one of the statement.
    fn last(&self, i: usize) -> bool {
        self.count == i + 1
    }

    /// The statement's text from token `i` to its end, as UTF-8.
    fn rest(&self, i: usize) -> Option<String> {
        let start = self.get(i)?.start;
        let text = self.sql.get(start..self.last_end)?;
        std::str::from_utf8(text).ok().map(str::to_string)
    }

    /// A savepoint name at `i` (the last token), as PostgreSQL reads it: folded
    /// when unquoted, `""` read as `"` when quoted, truncated to NAMEDATALEN - 1
    /// bytes (so a longer name and its prefix are the same savepoint).
    fn name(&self, i: usize) -> Option<Box<[u8]>> {
        let token = self.get(i).filter(|_| self.last(i))?;
        let text = inner_ident(&token, self.sql);
        let mut name = match token.kind {
            Kind::Word => text.to_ascii_lowercase(),
            Kind::Quoted => unescape_quoted(text),
            _ => return None,
        };
        name.truncate(identifier_len(&name));
        Some(name.into())
    }

    fn classify(&self, statement: &Statement) -> (Action, Taint) {
        let other = (Action::Other, Taint::default());
        let Some(first) = self.get(0).filter(|t| t.kind == Kind::Word) else {
            return other;
        };
        let first = first.text(self.sql);
        let keyword = |k: &[u8]| first.eq_ignore_ascii_case(k);
        if keyword(b"set") {
            self.classify_set()
        } else if keyword(b"reset") {
            self.classify_reset()
        } else if keyword(b"discard") {
            if self.is(1, b"all") && self.last(1) {
                (Action::Change(ParamChange::DiscardAll), Taint::default())
            } else {
                other
            }
        } else if keyword(b"savepoint") {
            self.savepoint(1, Action::Savepoint)
        } else if keyword(b"rollback") || keyword(b"abort") {
            let mut i = 1;
            if self.is(i, b"work") || self.is(i, b"transaction") {
                i += 1;
            }
            if !self.is(i, b"to") {
                return other;
            }
            i += 1;
            if self.is(i, b"savepoint") {
                i += 1;
            }
            self.savepoint(i, Action::RollbackTo)
        } else if keyword(b"release") {
            let i = if self.is(1, b"savepoint") { 2 } else { 1 };
            self.savepoint(i, Action::Release)
        } else if keyword(b"do") {
            // Anonymous code can do anything a session can; only the statement
            // names are worth keeping when it does not mention them.
            let mut taint = Taint::SETTINGS | Taint::TEMP | Taint::ADVISORY | Taint::CURSORS;
            let text = self.sql.get(..self.last_end).unwrap_or_default();
            if contains_ci(text, b"prepare") || contains_ci(text, b"deallocate") {
                taint |= Taint::STATEMENTS;
            }
            (Action::Other, taint)
        } else if keyword(b"call") {
            // A procedure's body is not in the text, and it may even commit: it can
            // leave anything behind, settings included.
            let all = Taint::SETTINGS
                | Taint::TEMP
                | Taint::ADVISORY
                | Taint::CURSORS
                | Taint::STATEMENTS;
            (Action::Other, all)
        } else if keyword(b"create") {
            let temp = (1..4).any(|i| self.is(i, b"temp") || self.is(i, b"temporary"));
            (Action::Other, taint_if(temp, Taint::TEMP))
        } else if keyword(b"select") || keyword(b"with") {
            (Action::Other, taint_if(statement.into_temp, Taint::TEMP))
        } else if keyword(b"declare") {
            (Action::Other, taint_if(statement.with_hold, Taint::CURSORS))
        } else if keyword(b"prepare") {
            let sql_prepare = !self.is(1, b"transaction");
            (Action::Other, taint_if(sql_prepare, Taint::STATEMENTS))
        } else if keyword(b"load") {
            (Action::Other, Taint::SETTINGS)
        } else {
            other
        }
    }

    fn savepoint(&self, i: usize, make: fn(Box<[u8]>) -> Action) -> (Action, Taint) {
        match self.name(i) {
            Some(name) => (make(name), Taint::default()),
            // Not understood: whatever it does, nothing pending can be trusted.
            None => (Action::Other, Taint::SETTINGS),
        }
    }

    fn classify_set(&self) -> (Action, Taint) {
        let untracked = (Action::Other, Taint::SETTINGS);
        let scoped = (Action::Other, Taint::default());
        if self.get(2).map(|t| t.kind) == Some(Kind::Punct(b'.')) {
            // `SET role.x = 1`, `SET names.x ...`: a custom parameter whose first
            // part is one of the words below, not the form that word starts.
            return match self.generic_set(1) {
                Some(change) => (Action::Change(change), Taint::default()),
                None => untracked,
            };
        }
        if self.is(1, b"local") || self.is(1, b"transaction") || self.is(1, b"constraints") {
            return scoped;
        }
        let change = if self.is(1, b"session") && self.is(2, b"authorization") {
            self.value(3, "session_authorization")
        } else if self.is(1, b"session") && self.is(2, b"characteristics") {
            None
        } else if self.is(1, b"role")
            && !(self.is(2, b"to") || self.get(2).map(|t| t.kind) == Some(Kind::Punct(b'=')))
        {
            // SET ROLE x, not the generic SET role TO x.
            self.value(2, "role")
        } else if self.is(1, b"time") && self.is(2, b"zone") {
            if self.is(3, b"interval") {
                None
            } else if self.last(3) && (self.is(3, b"local") || self.is(3, b"default")) {
                Some(ParamChange::Reset("timezone".into()))
            } else {
                self.value(3, "timezone")
            }
        } else if self.is(1, b"names") {
            self.value(2, "client_encoding")
        } else if self.is(1, b"schema") {
            self.value(2, "search_path")
        } else if self.is(1, b"session") {
            self.generic_set(2)
        } else {
            self.generic_set(1)
        };
        match change {
            Some(change) if transaction_scoped(&change) => scoped,
            Some(change) => (Action::Change(change), Taint::default()),
            None => untracked,
        }
    }

    /// `name {TO|=} value` from token `i`.
    fn generic_set(&self, i: usize) -> Option<ParamChange> {
        let (name, next) = self.dotted_name(i)?;
        if !(self.is(next, b"to") || self.get(next)?.kind == Kind::Punct(b'=')) {
            return None;
        }
        if self.is(next + 1, b"from") && self.is(next + 2, b"current") {
            return None;
        }
        self.value(next + 1, &name)
    }

    /// The value from token `i` to the end; DEFAULT means RESET.
    fn value(&self, i: usize, name: &str) -> Option<ParamChange> {
        if self.last(i) && self.is(i, b"default") {
            return Some(ParamChange::Reset(name.into()));
        }
        let value = self.rest(i)?;
        Some(ParamChange::Set(name.into(), value))
    }

    /// A parameter name (`a` or `a.b`), lowercased, and the index after it.
    fn dotted_name(&self, i: usize) -> Option<(String, usize)> {
        let mut end = i;
        loop {
            if self.get(end)?.kind != Kind::Word {
                return None;
            }
            end += 1;
            if self.get(end).map(|t| t.kind) != Some(Kind::Punct(b'.')) {
                break;
            }
            end += 1;
        }
        let text = self.sql.get(self.get(i)?.start..self.get(end - 1)?.end)?;
        let name = std::str::from_utf8(text).ok()?.to_ascii_lowercase();
        is_identifier(&name).then_some((name, end))
    }

    fn classify_reset(&self) -> (Action, Taint) {
        let change = if self.is(1, b"all") && self.last(1) {
            Some(ParamChange::ResetAll)
        } else if self.is(1, b"role") && self.last(1) {
            Some(ParamChange::Reset("role".into()))
        } else if self.is(1, b"session") && self.is(2, b"authorization") && self.last(2) {
            Some(ParamChange::Reset("session_authorization".into()))
        } else if self.is(1, b"time") && self.is(2, b"zone") && self.last(2) {
            Some(ParamChange::Reset("timezone".into()))
        } else {
            self.dotted_name(1)
                .filter(|(_, next)| *next == self.count)
                .map(|(name, _)| ParamChange::Reset(name))
        };
        match change {
            Some(change) if transaction_scoped(&change) => (Action::Other, Taint::default()),
            Some(change) => (Action::Change(change), Taint::default()),
            None => (Action::Other, Taint::SETTINGS),
        }
    }
}

/// Parameters PostgreSQL sets afresh at the start of every transaction (from their
/// `default_` ones): a session-level SET of them ends with its transaction, and
/// re-run at a checkout after another statement it fails ("must be called before
/// any query").
const TRANSACTION_SCOPED: [&str; 3] = [
    "transaction_isolation",
    "transaction_read_only",
    "transaction_deferrable",
];

fn transaction_scoped(change: &ParamChange) -> bool {
    change
        .name()
        .is_some_and(|n| TRANSACTION_SCOPED.iter().any(|t| n.eq_ignore_ascii_case(t)))
}

/// The parameter a plain string literal names (`'TimeZone'`), lowercased as
/// PostgreSQL matches names; None for anything but a simple name.
fn literal_name(literal: &[u8]) -> Option<Box<str>> {
    let inner = literal.strip_prefix(b"'")?.strip_suffix(b"'")?;
    let name = std::str::from_utf8(inner).ok()?.to_ascii_lowercase();
    is_identifier(&name).then(|| name.into())
}

/// Longest identifier PostgreSQL keeps (NAMEDATALEN - 1 bytes).
const MAX_IDENTIFIER: usize = 63;

/// How many bytes of `name` PostgreSQL keeps: at most [`MAX_IDENTIFIER`], cut at a
/// character boundary (it truncates multibyte names whole characters at a time).
fn identifier_len(name: &[u8]) -> usize {
    if name.len() <= MAX_IDENTIFIER {
        return name.len();
    }
    // A UTF-8 continuation byte (10xxxxxx) cannot start a character.
    (0..=MAX_IDENTIFIER)
        .rev()
        .find(|&at| name.get(at).is_some_and(|b| b & 0xc0 != 0x80))
        .unwrap_or(0)
}

/// The text between the quotes of a quoted identifier, with `""` read as `"`.
fn unescape_quoted(inner: &[u8]) -> Vec<u8> {
    let mut name = Vec::with_capacity(inner.len());
    let mut quote = false;
    for &byte in inner {
        if byte == b'"' && quote {
            quote = false;
            continue;
        }
        quote = byte == b'"';
        name.push(byte);
    }
    name
}

fn taint_if(condition: bool, taint: Taint) -> Taint {
    if condition {
        taint
    } else {
        Taint::default()
    }
}

fn contains_ci(text: &[u8], word: &[u8]) -> bool {
    text.windows(word.len())
        .any(|w| w.eq_ignore_ascii_case(word))
}

#[cfg(test)]
mod tests;
