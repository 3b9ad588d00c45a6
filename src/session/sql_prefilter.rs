//! The cheap first look at a query text before the session-state classifier
//! ([`sql_scan`](super::sql_scan)): whether any word the classifier acts on can be
//! in it at all. Most application queries mention none, and for them the lexer
//! never runs. The answer errs only towards a full scan; the tests keep it so as
//! the classifier grows.

/// Whether a trigger word starts anywhere in `sql` where a word can start: at the
/// beginning or after any byte that is not an ASCII letter (so also after `_`,
/// digits, quotes and inside strings and comments), case-insensitively. It errs
/// only towards a full scan: every token the classifier compares starts after a
/// non-letter (the lexer never splits a run of letters), and every keyword or
/// function name it acts on begins with a trigger at such a place (`set_config`
/// with `set`, `pg_temp` with `temp` after `_`, the advisory lock functions with
/// `advisory` after `_`); a word that only matters after one of them, such as `to`
/// in `ROLLBACK TO`, needs none. The test `every_keyword_is_behind_a_trigger`
/// keeps the triggers complete.
pub fn may_touch_session(sql: &[u8]) -> bool {
    // Eight bytes at a time: a mask of the bytes that start a run of letters, then
    // a trigger comparison at each of them only (a handful per query).
    let mut chunks = sql.chunks_exact(8);
    let mut after_letter = false;
    for (index, chunk) in chunks.by_ref().enumerate() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        let letters = letter_mask(u64::from_le_bytes(bytes));
        let mut starts = letters & !((letters << 8) | (u64::from(after_letter) << 7));
        after_letter = letters >> 63 != 0;
        while starts != 0 {
            let at = index * 8 + (starts.trailing_zeros() / 8) as usize;
            if starts_with_trigger(sql.get(at..).unwrap_or_default()) {
                return true;
            }
            starts &= starts - 1;
        }
    }
    let tail_start = sql.len() - chunks.remainder().len();
    chunks.remainder().iter().enumerate().any(|(offset, byte)| {
        let letter = is_letter(*byte);
        let word_start = letter && !after_letter;
        after_letter = letter;
        word_start && starts_with_trigger(sql.get(tail_start + offset..).unwrap_or_default())
    })
}

fn is_letter(byte: u8) -> bool {
    // `| 0x20` lowercases letters and maps no other byte onto one.
    (byte | 0x20).is_ascii_lowercase()
}

/// The high bit of each byte of `word` set where that byte is an ASCII letter (as
/// [`is_letter`] says), every other bit clear. No addition carries across bytes:
/// each adds at most 0x1f to a value of at most 0x7f.
fn letter_mask(word: u64) -> u64 {
    const EACH: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = EACH * 0x80;
    let lower = word | (EACH * 0x20);
    let low7 = lower & (EACH * 0x7f);
    // 0x61 is 'a' and 0x7a is 'z': the high bit is set from 'a' up, and above 'z'.
    let at_least_a = low7 + EACH * (0x80 - 0x61);
    let above_z = low7 + EACH * (0x7f - 0x7a);
    at_least_a & !above_z & !lower & HIGH
}

fn starts_with_trigger(text: &[u8]) -> bool {
    let starts = |trigger: &[u8]| {
        text.get(..trigger.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(trigger))
    };
    match text {
        [first, second, ..] => match &[first | 0x20, second | 0x20] {
            b"ab" => starts(b"abort"),
            b"ca" => starts(b"call"),
            b"ad" => starts(b"advisory"),
            b"do" => true,
            b"di" => starts(b"discard"),
            b"de" => starts(b"deallocate"),
            b"ex" => starts(b"execute"),
            b"ho" => starts(b"hold"),
            b"lo" => starts(b"load"),
            b"li" => starts(b"listen"),
            b"pr" => starts(b"prepare"),
            b"ro" => starts(b"rollback"),
            b"re" => starts(b"release") || starts(b"reset"),
            b"se" => starts(b"set"),
            b"sa" => starts(b"savepoint"),
            b"te" => starts(b"temp"),
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words the classifier compares only after a trigger word has been seen in
    /// the same statement (so the prefilter has already let the text through).
    #[rustfmt::skip]
    const FOLLOWERS: &[&str] = &[
        "all", "authorization", "characteristics", "constraints", "create", "current",
        "declare", "default", "from", "interval", "into", "local", "names", "role",
        "schema", "select", "session", "time", "to", "transaction", "true", "'true'",
        "'t'", "'on'", "with", "work", "zone", "sy_",
    ];

    #[test]
    fn every_keyword_is_behind_a_trigger() {
        // Every byte-string keyword the classifier compares with is either a
        // trigger's superstring or a follower.
        let source = include_str!("sql_scan/mod.rs");
        // The classifier proper: from `scan_statements` to the tests (the trigger
        // table above it is what is being checked).
        let code = source
            .split("#[cfg(test)]")
            .next()
            .and_then(|code| code.split("fn scan_statements").nth(1))
            .unwrap_or_default();
        let mut checked = 0;
        for literal in code.split("b\"").skip(1) {
            let Some(word) = literal.split('"').next() else {
                continue;
            };
            if word.is_empty() || !word.bytes().any(|b| b.is_ascii_alphabetic()) {
                continue;
            }
            checked += 1;
            let triggered = may_touch_session(word.as_bytes());
            assert!(
                triggered || FOLLOWERS.contains(&word),
                "keyword {word:?} contains no trigger of may_touch_session and is not a listed follower"
            );
        }
        assert!(
            checked > 30,
            "found only {checked} keywords: the source split is wrong"
        );
    }

    /// The byte-at-a-time definition [`may_touch_session`] computes eight bytes at
    /// a time.
    fn may_touch_session_bytewise(sql: &[u8]) -> bool {
        (0..sql.len()).any(|at| {
            let after_letter = at > 0 && is_letter(sql[at - 1]);
            is_letter(sql[at]) && !after_letter && starts_with_trigger(&sql[at..])
        })
    }

    #[test]
    fn the_word_mask_agrees_with_the_bytewise_definition() {
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let alphabet = b"setSETdoDOtempTEMPaz AZ_1$\x80\xff'\"@`[{;";
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 40) as usize;
            let sql: Vec<u8> = (0..len)
                .map(|i| {
                    let pick = (state >> (i % 16 * 4)) as usize + i * 7;
                    if i % 5 == 4 {
                        (state >> i) as u8
                    } else {
                        alphabet[pick % alphabet.len()]
                    }
                })
                .collect();
            assert_eq!(
                may_touch_session(&sql),
                may_touch_session_bytewise(&sql),
                "{:?}",
                String::from_utf8_lossy(&sql)
            );
        }
        for byte in 0..=255u8 {
            let mask = letter_mask(u64::from(byte) << 24);
            assert_eq!(mask != 0, is_letter(byte), "{byte:#x}");
        }
    }

    #[test]
    fn plain_queries_skip_the_scan() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42;",
            "insert into t values (1, 'x')",
            "BEGIN",
            "COMMIT",
        ] {
            assert!(!may_touch_session(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "SET x = 1",
            "select pg_advisory_lock(1)",
            "Update t SET a = 1",
        ] {
            assert!(may_touch_session(sql.as_bytes()), "{sql}");
        }
    }
}
