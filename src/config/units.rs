//! Human-friendly units in the YAML config: durations (`500ms`, `1s`, `2m`) and byte
//! sizes (`8kB`, `64MB`, `1GiB`, or a plain number of bytes).
//!
//! Sizes follow PostgreSQL's convention: `kB`/`MB`/`GB` are powers of 1024, as in
//! `postgresql.conf`, so a value copied from there means the same thing here.

use std::fmt;
use std::time::Duration;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as `500ms`, `1s`, `2m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|e| {
                de::Error::custom(format!(
                    "invalid duration {text:?} ({e}); write it like 500ms, 1s or 2m"
                ))
            })
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl From<HumanDuration> for Duration {
    fn from(value: HumanDuration) -> Duration {
        value.0
    }
}

/// A size in bytes, written as a number or with a unit (`B`, `kB`, `MB`, `GB`, `TB`,
/// also `KiB`/`MiB`/`GiB`/`TiB`; all powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

const UNITS: [(&str, u64); 5] = [
    ("TB", 1 << 40),
    ("GB", 1 << 30),
    ("MB", 1 << 20),
    ("kB", 1 << 10),
    ("B", 1),
];

impl ByteSize {
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let number: u64 = digits
            .parse()
            .map_err(|_| format!("invalid size {text:?}: expected a number like 64MB"))?;
        let multiplier = match unit.trim() {
            "" | "B" => 1,
            "kB" | "KB" | "k" | "K" | "KiB" => 1 << 10,
            "MB" | "M" | "MiB" => 1 << 20,
            "GB" | "G" | "GiB" => 1 << 30,
            "TB" | "T" | "TiB" => 1 << 40,
            other => {
                return Err(format!(
                    "invalid size {text:?}: unknown unit {other:?} (use B, kB, MB, GB or TB)"
                ))
            }
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| format!("size {text:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, factor) in UNITS {
            if self.0 >= factor && self.0.is_multiple_of(factor) {
                return write!(f, "{}{name}", self.0 / factor);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// A size as YAML gives it: a plain number of bytes or text with a unit. A bare
/// `off` reaches us as the boolean false (YAML 1.1 booleans), hence `Flag`.
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeInput {
    Number(u64),
    Flag(bool),
    Text(String),
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match SizeInput::deserialize(deserializer)? {
            SizeInput::Number(n) => Ok(ByteSize(n)),
            SizeInput::Flag(flag) => Err(de::Error::custom(format!(
                "expected a size like 8kB or 64MB, found {flag}"
            ))),
            SizeInput::Text(text) => ByteSize::parse(&text).map_err(de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

/// A byte limit that can be switched `off`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaxLag(pub Option<ByteSize>);

impl<'de> Deserialize<'de> for MaxLag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match SizeInput::deserialize(deserializer)? {
            SizeInput::Number(n) => Ok(MaxLag(Some(ByteSize(n)))),
            SizeInput::Flag(false) => Ok(MaxLag(None)),
            SizeInput::Flag(true) => Err(de::Error::custom("expected a size like 16MB, or off")),
            SizeInput::Text(text) if text.trim().eq_ignore_ascii_case("off") => Ok(MaxLag(None)),
            SizeInput::Text(text) => ByteSize::parse(&text)
                .map(|size| MaxLag(Some(size)))
                .map_err(|e| de::Error::custom(format!("{e}, or off"))),
        }
    }
}

impl Serialize for MaxLag {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(size) => size.serialize(serializer),
            None => serializer.serialize_str("off"),
        }
    }
}

/// A time limit that can be switched off: `off` (or `0`) or a duration like `30s`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limit(pub Option<Duration>);

/// A limit as YAML gives it: a bare `off` arrives as the boolean false, a bare `0`
/// as a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum LimitInput {
    Number(u64),
    Flag(bool),
    Text(String),
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let expected = "expected a duration like 30s, or off";
        match LimitInput::deserialize(deserializer)? {
            LimitInput::Number(0) | LimitInput::Flag(false) => Ok(Limit(None)),
            LimitInput::Number(n) => Err(de::Error::custom(format!(
                "{expected}; a bare number ({n}) has no unit"
            ))),
            LimitInput::Flag(true) => Err(de::Error::custom(expected)),
            LimitInput::Text(text) if text.trim().eq_ignore_ascii_case("off") => Ok(Limit(None)),
            LimitInput::Text(text) => match humantime::parse_duration(text.trim()) {
                Ok(d) if d.is_zero() => Ok(Limit(None)),
                Ok(d) => Ok(Limit(Some(d))),
                Err(e) => Err(de::Error::custom(format!(
                    "invalid duration {text:?} ({e}); {expected}"
                ))),
            },
        }
    }
}

impl Serialize for Limit {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(d) => HumanDuration(d).serialize(serializer),
            None => serializer.serialize_str("off"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_postgres_units() {
        assert_eq!(ByteSize::parse("1MB"), Ok(ByteSize(1 << 20)));
        assert_eq!(ByteSize::parse("8kB"), Ok(ByteSize(8192)));
        assert_eq!(ByteSize::parse("2 GiB"), Ok(ByteSize(2 << 30)));
        assert_eq!(ByteSize::parse("123"), Ok(ByteSize(123)));
        assert!(ByteSize::parse("12 parsecs").is_err());
        assert!(ByteSize::parse("MB").is_err());
        assert!(ByteSize::parse("99999999999999TB").is_err());
    }

    #[test]
    fn sizes_display_in_the_largest_exact_unit() {
        assert_eq!(ByteSize(64 << 20).to_string(), "64MB");
        assert_eq!(ByteSize(1536).to_string(), "1536B");
        assert_eq!(ByteSize(0).to_string(), "0B");
    }

    #[test]
    fn max_lag_is_off_when_written_bare_or_quoted() {
        #[derive(Deserialize)]
        struct Holder {
            lag: MaxLag,
        }
        let lag = |yaml: &str| serde_saphyr::from_str::<Holder>(yaml).map(|h| h.lag);
        assert_eq!(lag("lag: off").ok(), Some(MaxLag(None)));
        assert_eq!(lag("lag: \"off\"").ok(), Some(MaxLag(None)));
        assert_eq!(
            lag("lag: 16MB").ok(),
            Some(MaxLag(Some(ByteSize(16 << 20))))
        );
        assert!(lag("lag: on").is_err());
    }

    #[test]
    fn limits_are_off_when_written_off_or_zero() {
        #[derive(Deserialize)]
        struct Holder {
            limit: Limit,
        }
        let limit = |yaml: &str| serde_saphyr::from_str::<Holder>(yaml).map(|h| h.limit);
        assert_eq!(limit("limit: off").ok(), Some(Limit(None)));
        assert_eq!(limit("limit: \"off\"").ok(), Some(Limit(None)));
        assert_eq!(limit("limit: 0").ok(), Some(Limit(None)));
        assert_eq!(limit("limit: 0s").ok(), Some(Limit(None)));
        assert_eq!(
            limit("limit: 30s").ok(),
            Some(Limit(Some(Duration::from_secs(30))))
        );
        assert!(limit("limit: 30").is_err(), "a bare number has no unit");
        assert!(limit("limit: on").is_err());
    }
}
