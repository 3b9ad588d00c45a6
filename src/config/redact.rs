//! YAML errors that never show a secret. serde-saphyr's own snippet quotes the lines
//! around an error verbatim, so a type error next to (or on) a `password:` line
//! would print the password in `switchyard check`, the log, `POST /reload`'s answer
//! and `/status`. Here the snippet is rebuilt from a copy of the source whose
//! secret values are replaced by `<redacted>`: the values of keys named like
//! `password`, `secret`, `token` or `key` (`api_key`, `db_password`, ...), in block
//! and flow style, including values continued on following lines. The error's
//! message is also scrubbed of any such value, should the parser ever echo one.

/// Lines shown before and after the error line.
const CONTEXT_LINES: usize = 2;
const MASK: &str = "<redacted>";
/// Secret values shorter than this are not scrubbed from messages (they would
/// match ordinary words); the snippet masks them all the same.
const MIN_SCRUBBED_LEN: usize = 3;

/// The text for a parse error: message, position and a redacted snippet.
pub(super) fn parse_error(source: &str, error: &serde_saphyr::Error) -> String {
    let masked = mask_secrets(source);
    let mut message = error.without_snippet().to_string();
    for secret in masked
        .secrets
        .iter()
        .filter(|s| s.len() >= MIN_SCRUBBED_LEN)
    {
        message = message.replace(secret.as_str(), MASK);
    }
    let Some(location) = error.location() else {
        return message;
    };
    let (line, column) = (location.line() as usize, location.column() as usize);
    if line == 0 || line > masked.lines.len() {
        return message;
    }
    let width = (line + CONTEXT_LINES)
        .min(masked.lines.len())
        .to_string()
        .len();
    let mut out = format!("{message}\n{:width$}--> line {line}, column {column}\n", "");
    out.push_str(&format!("{:width$} |\n", ""));
    let first = line.saturating_sub(CONTEXT_LINES).max(1);
    let last = (line + CONTEXT_LINES).min(masked.lines.len());
    for n in first..=last {
        let shown = &masked.lines[n - 1];
        out.push_str(&format!("{n:>width$} | {}\n", shown.text));
        if n == line {
            let caret = shown.shifted_column(column);
            out.push_str(&format!(
                "{:width$} | {:>caret$}\n",
                "",
                "^",
                caret = caret.max(1)
            ));
        }
    }
    out
}

/// One source line after masking, with what was replaced (for moving the caret).
struct MaskedLine {
    text: String,
    /// (start column, 1-based, of a replaced value; its length in chars; the mask's)
    edits: Vec<(usize, usize, usize)>,
}

impl MaskedLine {
    /// Where an original 1-based column ends up after the replacements before it.
    fn shifted_column(&self, column: usize) -> usize {
        let mut shifted = column as isize;
        for &(start, old, new) in &self.edits {
            if start + old <= column {
                shifted += new as isize - old as isize;
            } else if start <= column {
                // Inside a masked value: point at the mask.
                shifted -= (column - start) as isize;
            }
        }
        shifted.max(1) as usize
    }
}

struct Masked {
    lines: Vec<MaskedLine>,
    /// The replaced texts, for scrubbing messages.
    secrets: Vec<String>,
}

fn is_secret_key(key: &str) -> bool {
    let key = key
        .trim_matches(|c| c == '"' || c == '\'')
        .to_ascii_lowercase();
    ["password", "passwd", "secret", "token"]
        .iter()
        .any(|word| key.contains(word))
        || key == "key"
        || key.ends_with("_key")
        || key.ends_with("-key")
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start_matches([' ', '\t', '-']).len()
}

fn mask_secrets(source: &str) -> Masked {
    let mut lines = Vec::new();
    let mut secrets = Vec::new();
    // Set while a secret's value continues on the lines below its key: the key's
    // indentation (more-indented lines belong to it) and open brackets.
    let mut continuation: Option<(usize, i32)> = None;
    for line in source.lines() {
        if let Some((key_indent, depth)) = continuation {
            let blank = line.trim().is_empty();
            if blank || depth > 0 || indentation(line) > key_indent {
                let indent = line.len() - line.trim_start().len();
                let rest = &line[indent..];
                let depth = depth + bracket_balance(rest);
                continuation = Some((key_indent, depth.max(0)));
                if !rest.is_empty() {
                    secrets.push(rest.trim().to_string());
                }
                let text = if rest.is_empty() {
                    line.to_string()
                } else {
                    format!("{}{MASK}", &line[..indent])
                };
                let edits = vec![(indent + 1, rest.chars().count(), MASK.len())];
                lines.push(MaskedLine { text, edits });
                continue;
            }
            continuation = None;
        }
        let (masked, found, open) = mask_line(line);
        secrets.extend(found);
        if let Some(depth) = open {
            continuation = Some((indentation(line), depth));
        }
        lines.push(masked);
    }
    Masked { lines, secrets }
}

/// Masks the secret values on one line. Returns the line, the values, and
/// `Some(open brackets)` when a secret's value continues on the next lines.
fn mask_line(line: &str) -> (MaskedLine, Vec<String>, Option<i32>) {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::new();
    let mut edits = Vec::new();
    let mut found = Vec::new();
    let mut continues = None;
    let mut i = 0;
    // Inside a flow collection, a plain value ends at ',' '}' or ']'.
    let mut flow_depth = 0i32;
    while i < chars.len() {
        let c = chars[i];
        if c == '#' && (i == 0 || chars[i - 1].is_whitespace()) {
            out.extend(&chars[i..]);
            break;
        }
        if let Some(value_start) = secret_value_at(&chars, i) {
            out.extend(&chars[i..value_start]);
            let value_end = value_end(&chars, value_start, flow_depth > 0);
            let value: String = chars[value_start..value_end].iter().collect();
            let trimmed = value.trim_end();
            if trimmed.is_empty() || trimmed == "|" || trimmed == ">" {
                continues = Some(0);
                out.extend(&chars[value_start..]);
                break;
            }
            let balance = bracket_balance(trimmed);
            if balance > 0 {
                continues = Some(balance);
            }
            found.push(trimmed.trim_matches(|c| c == '"' || c == '\'').to_string());
            edits.push((value_start + 1, trimmed.chars().count(), MASK.len()));
            out.push_str(MASK);
            i = value_start + trimmed.chars().count();
            continue;
        }
        match c {
            '{' | '[' => flow_depth += 1,
            '}' | ']' => flow_depth -= 1,
            _ => {}
        }
        out.push(c);
        i += 1;
    }
    (MaskedLine { text: out, edits }, found, continues)
}

/// If a secret key starts at `i` (`password:` and the like, as a whole key),
/// returns where its value starts.
fn secret_value_at(chars: &[char], i: usize) -> Option<usize> {
    let boundary = i == 0 || matches!(chars[i - 1], ' ' | '\t' | '{' | ',' | '-' | '[');
    if !boundary {
        return None;
    }
    let mut end = i;
    while end < chars.len()
        && (chars[end].is_ascii_alphanumeric() || matches!(chars[end], '_' | '-' | '"' | '\''))
    {
        end += 1;
    }
    if end == i || chars.get(end) != Some(&':') {
        return None;
    }
    let after = chars.get(end + 1);
    if !(after.is_none() || after.is_some_and(|c| c.is_whitespace())) {
        return None;
    }
    let key: String = chars[i..end].iter().collect();
    if !is_secret_key(&key) {
        return None;
    }
    let mut value_start = end + 1;
    while value_start < chars.len() && chars[value_start].is_whitespace() {
        value_start += 1;
    }
    Some(value_start)
}

/// Where a value starting at `start` ends: a quoted string at its closing quote,
/// a flow collection at its closing bracket (or the line's end), a plain value at
/// a comment, or in flow context at ',' '}' or ']'.
fn value_end(chars: &[char], start: usize, in_flow: bool) -> usize {
    let Some(&first) = chars.get(start) else {
        return start;
    };
    match first {
        '"' | '\'' => {
            let mut j = start + 1;
            while j < chars.len() {
                if chars[j] == '\\' && first == '"' {
                    j += 2;
                    continue;
                }
                if chars[j] == first {
                    return j + 1;
                }
                j += 1;
            }
            chars.len()
        }
        '[' | '{' => {
            let mut depth = 0;
            for (j, c) in chars.iter().enumerate().skip(start) {
                match c {
                    '[' | '{' => depth += 1,
                    ']' | '}' => {
                        depth -= 1;
                        if depth == 0 {
                            return j + 1;
                        }
                    }
                    _ => {}
                }
            }
            chars.len()
        }
        _ => {
            let mut j = start;
            while j < chars.len() {
                let c = chars[j];
                if c == '#' && chars[j - 1].is_whitespace() {
                    break;
                }
                if in_flow && matches!(c, ',' | '}' | ']') {
                    break;
                }
                j += 1;
            }
            j
        }
    }
}

fn bracket_balance(text: &str) -> i32 {
    text.chars()
        .map(|c| match c {
            '[' | '{' => 1,
            ']' | '}' => -1,
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(source: &str) -> String {
        mask_secrets(source)
            .lines
            .into_iter()
            .map(|l| l.text)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn block_flow_quoted_and_continued_values_are_masked() {
        let source = "\
users:
  - name: app
    password: hunter2 # a comment stays
  - { name: b, password: \"hun, ter3\", auth: md5 }
  - { name: c, password: [x1, x2], auth: md5 }
admin: { token: tok-value }
other:
  api_key: k-value
  keepalive: 3
  password:
    - list-item-secret
  after: visible
  db_password: |
    block-secret
";
        let out = masked(source);
        for secret in [
            "hunter2",
            "hun, ter3",
            "x1",
            "tok-value",
            "k-value",
            "list-item-secret",
            "block-secret",
        ] {
            assert!(!out.contains(secret), "{secret} shown in:\n{out}");
        }
        for kept in [
            "# a comment stays",
            "auth: md5 }",
            "keepalive: 3",
            "after: visible",
            "name: b",
        ] {
            assert!(out.contains(kept), "{kept} lost in:\n{out}");
        }
    }

    #[test]
    fn the_snippet_shows_the_error_position_without_secrets() {
        let source = "users:\n  - { name: app, password: pw-secret-1, auth: md55 }\n";
        let Err(error) = serde_saphyr::from_str::<crate::config::Config>(source) else {
            panic!("a parse error expected");
        };
        let text = parse_error(source, &error);
        assert!(!text.contains("pw-secret-1"), "{text}");
        assert!(text.contains("line 2, column"), "{text}");
        // The caret still points at `md55`, after the shorter mask.
        let lines: Vec<&str> = text.lines().collect();
        let shown = lines
            .iter()
            .position(|l| l.contains("auth: md55"))
            .expect("error line shown");
        let caret = lines[shown + 1].find('^').expect("caret");
        assert_eq!(&lines[shown][caret..caret + 4], "md55", "{text}");
    }
}
