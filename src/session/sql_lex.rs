//! A lexer for the SQL text clients send: tokens (words, quoted identifiers, string
//! and dollar-quoted literals, parameters, punctuation) with comments and whitespace
//! skipped, and the split into statements at top-level semicolons. It follows
//! PostgreSQL's lexical rules closely enough to find statement boundaries and
//! keywords, never decodes text (bytes that are not UTF-8 are identifier bytes, as
//! in PostgreSQL), never allocates and never panics. What the statements mean is
//! [`sql_scan`](super::sql_scan)'s job.

/// Makes a string literal an escape string (`E'...'`), whose backslashes mean
/// the same whatever `standard_conforming_strings` is.
const ESCAPE_STRING_PREFIX: &[u8] = b"E";

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A keyword, an unquoted identifier or a number.
    Word,
    /// A `"quoted identifier"` (the span includes the quotes).
    Quoted,
    /// A string literal: `'...'`, `E'...'` or `$tag$...$tag$` (quotes included).
    Str,
    /// `$1`.
    Param,
    /// Any other single byte (operators, parentheses, commas, dots).
    Punct(u8),
    /// A `;`.
    Semicolon,
}

/// One token: its kind and its byte range in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

impl Token {
    pub fn text<'a>(&self, sql: &'a [u8]) -> &'a [u8] {
        sql.get(self.start..self.end).unwrap_or_default()
    }

    /// An unquoted word equal to `keyword` (ASCII, any case).
    pub fn is(&self, sql: &[u8], keyword: &[u8]) -> bool {
        self.kind == Kind::Word && self.text(sql).eq_ignore_ascii_case(keyword)
    }
}

/// Tokens of a SQL text, in order.
pub struct Lexer<'a> {
    sql: &'a [u8],
    pos: usize,
    reading: Reading,
    /// A literal held a backslash another [`Reading`] may take differently.
    saw_backslash: bool,
}

/// How backslashes in string literals are read: what PostgreSQL does depends on
/// session state the text does not show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    /// A backslash escapes in plain `'...'` literals too, as with
    /// `standard_conforming_strings` off.
    pub backslash_strings: bool,
    /// A backslash right after a byte of 0x80 or more is the second byte of a
    /// character, as in the client encodings Shift-JIS, BIG5, GBK, GB18030, UHC and
    /// JOHAB (the server reads the text converted, where it is no backslash).
    pub multibyte_backslash: bool,
}

impl Reading {
    /// The readings other than the standard one (`standard_conforming_strings` on,
    /// a client encoding where 0x5c is always a backslash).
    pub const OTHERS: [Reading; 3] = [
        Reading {
            backslash_strings: true,
            multibyte_backslash: false,
        },
        Reading {
            backslash_strings: false,
            multibyte_backslash: true,
        },
        Reading {
            backslash_strings: true,
            multibyte_backslash: true,
        },
    ];
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

impl<'a> Lexer<'a> {
    pub fn new(sql: &'a [u8]) -> Lexer<'a> {
        Lexer::with_reading(sql, Reading::default())
    }

    /// A lexer that reads backslashes in literals as `reading` says.
    pub fn with_reading(sql: &'a [u8], reading: Reading) -> Lexer<'a> {
        Lexer {
            sql,
            pos: 0,
            reading,
            saw_backslash: false,
        }
    }

    /// Whether a literal read so far held a backslash that another [`Reading`]
    /// may take differently (in a plain literal, or right after a byte of 0x80 or
    /// more): the text may then split into other statements.
    pub fn saw_backslash(&self) -> bool {
        self.saw_backslash
    }

    fn at(&self, offset: usize) -> Option<u8> {
        self.sql.get(self.pos + offset).copied()
    }

    /// Skips whitespace, `--` comments and nested `/* */` comments.
    fn skip_blank(&mut self) {
        loop {
            match (self.at(0), self.at(1)) {
                (Some(b), _) if b.is_ascii_whitespace() || b == 0 => self.pos += 1,
                (Some(b'-'), Some(b'-')) => {
                    while self.at(0).is_some_and(|b| b != b'\n') {
                        self.pos += 1;
                    }
                }
                (Some(b'/'), Some(b'*')) => {
                    self.pos += 2;
                    let mut depth = 1usize;
                    while depth > 0 {
                        match (self.at(0), self.at(1)) {
                            (None, _) => return,
                            (Some(b'/'), Some(b'*')) => {
                                depth += 1;
                                self.pos += 2;
                            }
                            (Some(b'*'), Some(b'/')) => {
                                depth -= 1;
                                self.pos += 2;
                            }
                            _ => self.pos += 1,
                        }
                    }
                }
                _ => return,
            }
        }
    }

    /// A quoted run starting at the quote at `self.pos`; a doubled quote stays
    /// inside, and with `backslash` a backslash escapes the next byte.
    fn quoted(&mut self, quote: u8, backslash: bool) {
        self.pos += 1;
        let mut previous = quote;
        while let Some(b) = self.at(0) {
            self.pos += 1;
            let high = previous >= 0x80;
            previous = b;
            if b == b'\\' && quote == b'\'' {
                self.saw_backslash |= high || !backslash;
            }
            if backslash && b == b'\\' && !(high && self.reading.multibyte_backslash) {
                self.pos = (self.pos + 1).min(self.sql.len());
                previous = 0;
            } else if b == quote {
                if self.at(0) == Some(quote) {
                    self.pos += 1;
                } else {
                    return;
                }
            }
        }
    }

    /// At a `$`: a dollar-quoted literal if a tag follows, else false.
    fn dollar_quoted(&mut self) -> bool {
        let rest = &self.sql[self.pos..];
        let tag_len = match rest[1..]
            .iter()
            .position(|b| !is_ident_byte(*b) || *b == b'$')
        {
            Some(n) if rest.get(1 + n) == Some(&b'$') => n,
            _ => return false,
        };
        if rest.get(1).is_some_and(u8::is_ascii_digit) {
            return false;
        }
        let tag = &rest[..tag_len + 2];
        let body = &rest[tag.len()..];
        let close = body
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'$')
            .find(|(i, _)| body[*i..].starts_with(tag))
            .map(|(i, _)| i + tag.len());
        self.pos += tag.len() + close.unwrap_or(body.len());
        true
    }
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        self.skip_blank();
        let start = self.pos;
        let b = self.at(0)?;
        let kind = match b {
            b'\'' => {
                self.quoted(b'\'', self.reading.backslash_strings);
                Kind::Str
            }
            b'"' => {
                self.quoted(b'"', false);
                Kind::Quoted
            }
            b';' => {
                self.pos += 1;
                Kind::Semicolon
            }
            b'$' if self.at(1).is_some_and(|d| d.is_ascii_digit()) => {
                self.pos += 1;
                while self.at(0).is_some_and(|d| d.is_ascii_digit()) {
                    self.pos += 1;
                }
                Kind::Param
            }
            b'$' if self.dollar_quoted() => Kind::Str,
            b if is_ident_start(b) => {
                while self.at(0).is_some_and(is_ident_byte) {
                    self.pos += 1;
                }
                let word = &self.sql[start..self.pos];
                if word.eq_ignore_ascii_case(b"e") && self.at(0) == Some(b'\'') {
                    self.quoted(b'\'', true);
                    Kind::Str
                } else {
                    Kind::Word
                }
            }
            b if b.is_ascii_digit()
                || b == b'.' && self.at(1).is_some_and(|d| d.is_ascii_digit()) =>
            {
                while self
                    .at(0)
                    .is_some_and(|d| d.is_ascii_alphanumeric() || d == b'.' || d == b'_')
                {
                    self.pos += 1;
                }
                Kind::Word
            }
            other => {
                self.pos += 1;
                Kind::Punct(other)
            }
        };
        Some(Token {
            kind,
            start,
            end: self.pos,
        })
    }
}

/// `sql` (the value of a SET) with every plain `'...'` literal that holds a
/// backslash written as an `E'...'` literal meaning the same, given the session's
/// `standard_conforming_strings` when it ran; None when there is none. Such a value
/// is re-run on the client's later servers, where that setting may differ when it
/// is parsed: an `E''` literal reads the same either way.
pub fn portable_literals(sql: &[u8], standard_strings: bool) -> Option<Vec<u8>> {
    let reading = Reading {
        backslash_strings: !standard_strings,
        multibyte_backslash: false,
    };
    let mut out = Vec::new();
    let mut copied = 0;
    let mut previous_end = None;
    for token in Lexer::with_reading(sql, reading) {
        let text = token.text(sql);
        // Right after another token (U&'...', N'...', B'...') the quote is part
        // of another literal form.
        let prefixed = previous_end == Some(token.start);
        previous_end = Some(token.end);
        if token.kind != Kind::Str || prefixed || !text.starts_with(b"'") || !text.contains(&b'\\')
        {
            continue;
        }
        out.extend_from_slice(sql.get(copied..token.start)?);
        out.extend_from_slice(ESCAPE_STRING_PREFIX);
        if standard_strings {
            // Each backslash was itself: doubled, it stays itself in E''.
            for &byte in text {
                out.push(byte);
                if byte == b'\\' {
                    out.push(b'\\');
                }
            }
        } else {
            // It already escaped, as in E''.
            out.extend_from_slice(text);
        }
        copied = token.end;
    }
    if copied == 0 {
        return None;
    }
    out.extend_from_slice(sql.get(copied..)?);
    Some(out)
}

/// Where statements end: at a semicolon outside parentheses and outside the body of
/// a `CREATE [OR REPLACE] FUNCTION|PROCEDURE ... BEGIN ATOMIC ... END` (the heuristic
/// psql uses, so the count matches the server's replies for what psql would send).
#[derive(Default)]
pub struct Splitter {
    paren_depth: u32,
    begin_depth: u32,
    /// First letters of the statement's leading words among CREATE, OR, REPLACE,
    /// FUNCTION, PROCEDURE (psql's `identifiers`).
    leading: [u8; 4],
    words: usize,
    /// The previous token was the word BEGIN outside a body: ATOMIC starts one.
    after_begin: bool,
}

impl Splitter {
    /// Feeds the next token; true when it ends the statement.
    pub fn ends_statement(&mut self, token: &Token, sql: &[u8]) -> bool {
        let after_begin = std::mem::take(&mut self.after_begin);
        match token.kind {
            Kind::Punct(b'(') => self.paren_depth += 1,
            Kind::Punct(b')') => self.paren_depth = self.paren_depth.saturating_sub(1),
            Kind::Semicolon if self.paren_depth == 0 && self.begin_depth == 0 => {
                *self = Splitter::default();
                return true;
            }
            Kind::Word => self.word(token.text(sql), after_begin),
            _ => {}
        }
        false
    }

    fn word(&mut self, word: &[u8], after_begin: bool) {
        let routine_start = [
            b"create".as_slice(),
            b"or",
            b"replace",
            b"function",
            b"procedure",
        ];
        if self.words < self.leading.len()
            && routine_start.iter().any(|k| word.eq_ignore_ascii_case(k))
        {
            self.leading[self.words] = word[0].to_ascii_lowercase();
        }
        self.words += 1;
        let [first, second, third, fourth] = self.leading;
        let in_routine = first == b"c"[0]
            && (second == b"f"[0]
                || second == b"p"[0]
                || second == b"o"[0]
                    && third == b"r"[0]
                    && (fourth == b"f"[0] || fourth == b"p"[0]));
        if !in_routine || self.paren_depth > 0 {
            return;
        }
        // Only BEGIN ATOMIC opens a body, as in the server's grammar (psql counts
        // any BEGIN, so a function called `begin` hid the statements after it);
        // inside one, CASE ... END nests.
        if self.begin_depth == 0 && word.eq_ignore_ascii_case(b"begin") {
            self.after_begin = true;
        } else if self.begin_depth == 0 && after_begin && word.eq_ignore_ascii_case(b"atomic") {
            self.begin_depth = 1;
        } else if word.eq_ignore_ascii_case(b"case") {
            if self.begin_depth >= 1 {
                self.begin_depth += 1;
            }
        } else if word.eq_ignore_ascii_case(b"end") {
            self.begin_depth = self.begin_depth.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<(Kind, &str)> {
        Lexer::new(sql.as_bytes())
            .map(|t| (t.kind, &sql[t.start..t.end]))
            .collect()
    }

    fn statements(sql: &str) -> Vec<String> {
        let bytes = sql.as_bytes();
        let mut out = Vec::new();
        let mut current: Option<(usize, usize)> = None;
        let mut splitter = Splitter::default();
        for token in Lexer::new(bytes) {
            if splitter.ends_statement(&token, bytes) {
                out.extend(current.take().map(|(s, e)| sql[s..e].to_string()));
            } else {
                let (s, _) = current.unwrap_or((token.start, token.end));
                current = Some((s, token.end));
            }
        }
        out.extend(current.map(|(s, e)| sql[s..e].to_string()));
        out
    }

    #[test]
    fn tokens() {
        use Kind::*;
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<(Kind, &str)>)> = vec![
            ("SET a TO 'x;y'", vec![(Word, "SET"), (Word, "a"), (Word, "TO"), (Str, "'x;y'")]),
            ("'it''s' e'a\\'b'", vec![(Str, "'it''s'"), (Str, "e'a\\'b'")]),
            ("\"we\"\"ird\".x", vec![(Quoted, "\"we\"\"ird\""), (Punct(b'.'), "."), (Word, "x")]),
            ("$$a;b$$ $x$ $$ $x$", vec![(Str, "$$a;b$$"), (Str, "$x$ $$ $x$")]),
            ("a$b $1", vec![(Word, "a$b"), (Param, "$1")]),
            ("-- c;\nx /* a /* b; */ ; */ y", vec![(Word, "x"), (Word, "y")]),
            ("1.5e3;", vec![(Word, "1.5e3"), (Semicolon, ";")]),
            ("'unterminated", vec![(Str, "'unterminated")]),
            ("$q$ never closed", vec![(Str, "$q$ never closed")]),
        ];
        for (sql, expected) in cases {
            assert_eq!(kinds(sql), expected, "{sql}");
        }
    }

    #[test]
    fn literals_with_backslashes_become_portable() {
        let portable = |sql: &str, standard| {
            portable_literals(sql.as_bytes(), standard)
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        };
        assert_eq!(
            portable("'C:\\t', 'x'", true).as_deref(),
            Some("E'C:\\\\t', 'x'")
        );
        assert_eq!(portable("'it\\'s'", false).as_deref(), Some("E'it\\'s'"));
        assert_eq!(portable("'plain', E'a\\n', $$b\\$$", true), None);
        assert_eq!(
            portable("U&'\\0041'", true),
            None,
            "a Unicode literal stays"
        );
        assert_eq!(portable("'a''\\'", true).as_deref(), Some("E'a''\\\\'"));
    }

    #[test]
    fn statement_split() {
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<&str>)> = vec![
            ("select 1; select 2;", vec!["select 1", "select 2"]),
            ("select ';'; -- x;\n set a=1", vec!["select ';'", "set a=1"]),
            (";; select 1 ;", vec!["select 1"]),
            ("do $$begin perform 1; end$$; listen x", vec!["do $$begin perform 1; end$$", "listen x"]),
            ("create function f() returns int language sql begin atomic select 1; select case when true then 2 end; end; set a=1",
             vec!["create function f() returns int language sql begin atomic select 1; select case when true then 2 end; end", "set a=1"]),
            ("select 1 as begin; set a = 1", vec!["select 1 as begin", "set a = 1"]),
            ("create function begin() returns int language sql return 1; set a = 1",
             vec!["create function begin() returns int language sql return 1", "set a = 1"]),
            ("create procedure p(begin int) language sql begin atomic select begin; end; set a = 1",
             vec!["create procedure p(begin int) language sql begin atomic select begin; end", "set a = 1"]),
            ("begin; set a=1; end; commit", vec!["begin", "set a=1", "end", "commit"]),
        ];
        for (sql, expected) in cases {
            assert_eq!(statements(sql), expected, "{sql}");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic generator: no dependency, same bytes every run.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let alphabet = b"'\"$;-/*\\eE ()x_1\n\xff\xc3";
        for len in 0..200 {
            for _ in 0..50 {
                let text: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        if state.is_multiple_of(4) {
                            (state >> 8) as u8
                        } else {
                            alphabet[(state >> 8) as usize % alphabet.len()]
                        }
                    })
                    .collect();
                let mut splitter = Splitter::default();
                let mut last = 0;
                for token in Lexer::new(&text) {
                    assert!(
                        token.start >= last && token.end > token.start && token.end <= text.len()
                    );
                    last = token.end;
                    splitter.ends_statement(&token, &text);
                }
            }
        }
    }
}
