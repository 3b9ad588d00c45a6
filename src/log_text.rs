//! Text that goes into log lines on a client's behalf, and how often. Names a
//! client chooses (user, database, application_name, and error messages that quote
//! them) are written with control characters escaped, so a name cannot forge log
//! lines or terminal escapes in a text log; refusals a flood can cause are logged
//! at a bounded rate, with a count of those left out.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Displays a string with control characters (C0, DEL, C1, and the Unicode line
/// and paragraph separators) as `\n`, `\t`, `\r` or `\u{..}`, and backslashes
/// doubled so an escape cannot be faked.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let needs_escape =
            |c: char| c.is_control() || c == '\\' || c == '\u{2028}' || c == '\u{2029}';
        if !self.0.contains(needs_escape) {
            return f.write_str(self.0);
        }
        for c in self.0.chars() {
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '\\' => f.write_str("\\\\")?,
                c if needs_escape(c) => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => fmt::Write::write_char(f, c)?,
            }
        }
        Ok(())
    }
}

/// The rate of the log lines of refused connections and logins, process-wide: at
/// most 10 a second.
pub fn refusals() -> &'static LogRate {
    static REFUSALS: std::sync::OnceLock<LogRate> = std::sync::OnceLock::new();
    REFUSALS.get_or_init(|| LogRate::new(Duration::from_secs(1), 10))
}

/// Allows up to `burst` log lines per `window`; what is left out is counted and
/// reported with the next line allowed.
pub struct LogRate {
    window: Duration,
    burst: u32,
    state: Mutex<(Instant, u32)>,
    suppressed: AtomicU64,
}

impl LogRate {
    pub fn new(window: Duration, burst: u32) -> LogRate {
        LogRate {
            window,
            burst,
            state: Mutex::new((Instant::now(), 0)),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Some(number of lines left out since the last one) if a line may be written
    /// now, None if it must be left out.
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (window_start, used) = &mut *state;
        if now.duration_since(*window_start) >= self.window {
            *window_start = now;
            *used = 0;
        }
        if *used >= self.burst {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *used += 1;
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_backslashes_are_escaped() {
        let cases = [
            ("alice", "alice"),
            ("a\nlevel=ERROR forged", "a\\nlevel=ERROR forged"),
            ("tab\there\r", "tab\\there\\r"),
            ("esc\u{1b}[31m", "esc\\u{1b}[31m"),
            ("back\\n slash", "back\\\\n slash"),
            ("line\u{2028}sep", "line\\u{2028}sep"),
            ("c1\u{85}", "c1\\u{85}"),
            ("ünïcødé", "ünïcødé"),
        ];
        for (raw, shown) in cases {
            assert_eq!(Escaped(raw).to_string(), shown, "{raw:?}");
        }
    }

    #[test]
    fn a_burst_is_allowed_then_lines_are_counted_until_the_next_window() {
        let rate = LogRate::new(Duration::from_millis(200), 3);
        assert_eq!(rate.allow(), Some(0));
        assert_eq!(rate.allow(), Some(0));
        assert_eq!(rate.allow(), Some(0));
        assert_eq!(rate.allow(), None);
        assert_eq!(rate.allow(), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(
            rate.allow(),
            Some(2),
            "the next line says two were left out"
        );
        assert_eq!(rate.allow(), Some(0));
    }
}
