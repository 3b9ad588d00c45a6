//! Which authentication methods a PostgreSQL server may make Switchyard use when it
//! logs in (`server.require_auth`, libpq's `require_auth`): the list is parsed here
//! and [`RequireAuth::check`] says whether a method the server asks for is allowed.
//! The server login loop asks before it sends anything, so a cleartext
//! or MD5 password never reaches a server that was not allowed to ask for it.
//!
//! As in libpq, the list is comma-separated (or a YAML list) of `password`
//! (cleartext), `md5`, `scram-sha-256` and `none` (the server asks for nothing,
//! `trust`); or all of them negated with `!` (everything but those). libpq's `gss`
//! and `sspi` are refused: Switchyard never speaks them.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One method a server can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerAuthMethod {
    /// Cleartext password (`AuthenticationCleartextPassword`).
    Password,
    Md5,
    ScramSha256,
    /// No authentication at all: the server answered `AuthenticationOk` first.
    None,
}

impl ServerAuthMethod {
    const ALL: [ServerAuthMethod; 4] = [
        ServerAuthMethod::Password,
        ServerAuthMethod::Md5,
        ServerAuthMethod::ScramSha256,
        ServerAuthMethod::None,
    ];

    fn bit(self) -> u8 {
        match self {
            ServerAuthMethod::Password => 1,
            ServerAuthMethod::Md5 => 2,
            ServerAuthMethod::ScramSha256 => 4,
            ServerAuthMethod::None => 8,
        }
    }

    /// libpq's name for the method.
    pub fn name(self) -> &'static str {
        match self {
            ServerAuthMethod::Password => "password",
            ServerAuthMethod::Md5 => "md5",
            ServerAuthMethod::ScramSha256 => "scram-sha-256",
            ServerAuthMethod::None => "none",
        }
    }

    fn parse(name: &str) -> Result<ServerAuthMethod, String> {
        ServerAuthMethod::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| match name {
                "gss" | "sspi" => format!("{name} is not supported by Switchyard"),
                other => format!(
                    "unknown method {other:?} (expected password, md5, scram-sha-256 or none, \
                     optionally all negated with '!')"
                ),
            })
    }

    /// What the server asked for, in an error message.
    fn described(self) -> &'static str {
        match self {
            ServerAuthMethod::Password => "a cleartext password",
            ServerAuthMethod::Md5 => "an MD5 password",
            ServerAuthMethod::ScramSha256 => "SCRAM-SHA-256",
            ServerAuthMethod::None => "no authentication (trust)",
        }
    }
}

/// The set of methods a server may use. `Copy`: it travels with every login.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequireAuth {
    allowed: u8,
    /// Written with `!`: kept only to print the setting back as it was given.
    negated: bool,
}

impl Default for RequireAuth {
    /// `scram-sha-256`: a server must prove it knows the password's verifier.
    fn default() -> Self {
        RequireAuth {
            allowed: ServerAuthMethod::ScramSha256.bit(),
            negated: false,
        }
    }
}

/// Why a server's request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the server asked for {asked}, which require_auth ({allowed}) does not allow; \
     nothing was sent (list the method in server.require_auth or the user's \
     require_auth if this server is meant to use it)"
)]
pub struct NotAllowed {
    pub asked: &'static str,
    pub allowed: String,
}

impl RequireAuth {
    /// Every method, `none` included (libpq without `require_auth`).
    pub fn any() -> RequireAuth {
        RequireAuth {
            allowed: ServerAuthMethod::ALL.iter().map(|m| m.bit()).sum(),
            negated: false,
        }
    }

    /// Parses libpq's syntax: names separated by commas, all or none of them
    /// prefixed with `!`.
    pub fn parse(text: &str) -> Result<RequireAuth, String> {
        let names: Vec<&str> = text.split(',').map(str::trim).collect();
        Self::from_names(&names)
    }

    fn from_names(names: &[&str]) -> Result<RequireAuth, String> {
        if names.is_empty() || names.iter().any(|n| n.is_empty()) {
            return Err("empty method name in require_auth".into());
        }
        let negated = names[0].starts_with('!');
        let mut listed = 0u8;
        for name in names {
            let bare = match (negated, name.strip_prefix('!')) {
                (true, Some(bare)) => bare,
                (false, None) => name,
                _ => {
                    return Err(
                        "require_auth methods must be all negated ('!') or none of them".into(),
                    )
                }
            };
            let method = ServerAuthMethod::parse(bare)?;
            if listed & method.bit() != 0 {
                return Err(format!("require_auth lists {bare} twice"));
            }
            listed |= method.bit();
        }
        let allowed = if negated {
            RequireAuth::any().allowed & !listed
        } else {
            listed
        };
        if allowed == 0 {
            return Err("require_auth allows no method at all".into());
        }
        Ok(RequireAuth { allowed, negated })
    }

    pub fn allows(self, method: ServerAuthMethod) -> bool {
        self.allowed & method.bit() != 0
    }

    /// `Ok` when the server may use `method`; otherwise the error to report.
    pub fn check(self, method: ServerAuthMethod) -> Result<(), NotAllowed> {
        if self.allows(method) {
            Ok(())
        } else {
            Err(NotAllowed {
                asked: method.described(),
                allowed: self.to_string(),
            })
        }
    }
}

impl fmt::Display for RequireAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = ServerAuthMethod::ALL
            .into_iter()
            .filter(|m| self.allows(*m) != self.negated)
            .map(|m| {
                if self.negated {
                    format!("!{}", m.name())
                } else {
                    m.name().to_string()
                }
            })
            .collect();
        f.write_str(&names.join(","))
    }
}

impl fmt::Debug for RequireAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequireAuth({self})")
    }
}

impl Serialize for RequireAuth {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RequireAuth {
    /// A libpq-style string (`"scram-sha-256,md5"`) or a YAML list of names.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            List(Vec<String>),
        }
        let parsed = match Form::deserialize(deserializer)? {
            Form::Text(text) => RequireAuth::parse(&text),
            Form::List(names) => {
                let names: Vec<&str> = names.iter().map(|n| n.trim()).collect();
                RequireAuth::from_names(&names)
            }
        };
        parsed.map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ServerAuthMethod::*;

    #[test]
    fn the_default_allows_only_scram() {
        let d = RequireAuth::default();
        assert!(d.allows(ScramSha256));
        for m in [Password, Md5, None] {
            assert!(!d.allows(m), "{m:?}");
        }
        assert_eq!(d.to_string(), "scram-sha-256");
    }

    #[test]
    fn lists_and_negations_follow_libpq() {
        let r = RequireAuth::parse("md5, scram-sha-256").expect("valid");
        assert!(r.allows(Md5) && r.allows(ScramSha256));
        assert!(!r.allows(Password) && !r.allows(None));
        let r = RequireAuth::parse("!password,!none").expect("valid");
        assert!(r.allows(Md5) && r.allows(ScramSha256));
        assert!(!r.allows(Password) && !r.allows(None));
        assert_eq!(r.to_string(), "!password,!none");
        assert_eq!(
            RequireAuth::parse(&r.to_string()).expect("round trip"),
            r,
            "Display parses back"
        );
    }

    #[test]
    fn bad_lists_are_refused_with_a_reason() {
        for (text, needle) in [
            ("md5,!password", "all negated"),
            ("gss", "not supported"),
            ("kerberos", "unknown method"),
            ("md5,md5", "twice"),
            ("", "empty"),
            ("!password,!md5,!scram-sha-256,!none", "no method"),
        ] {
            let err = RequireAuth::parse(text).expect_err(text);
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn a_refusal_names_what_was_asked_and_what_is_allowed() {
        let err = RequireAuth::default().check(Password).expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("a cleartext password"), "{text}");
        assert!(text.contains("(scram-sha-256)"), "{text}");
    }
}
