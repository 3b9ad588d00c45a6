//! Parsing one admin console command (PgBouncer's grammar: a keyword, maybe an
//! argument, case-insensitive, an optional trailing semicolon) into [`Command`].

use crate::protocol::{ClientError, SqlState};

/// What a SHOW asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Help,
    Pools,
    Clients,
    Servers,
    Stats,
    StatsTotals,
    StatsAverages,
    Totals,
    Databases,
    Users,
    Config,
    Lists,
    Mem,
    Version,
    State,
    Nodes,
    Routes,
}

impl Show {
    fn from_word(word: &str) -> Option<Show> {
        Some(match word {
            "help" => Show::Help,
            "pools" => Show::Pools,
            "clients" => Show::Clients,
            "servers" => Show::Servers,
            "stats" => Show::Stats,
            "stats_totals" => Show::StatsTotals,
            "stats_averages" => Show::StatsAverages,
            "totals" => Show::Totals,
            "databases" => Show::Databases,
            "users" => Show::Users,
            "config" => Show::Config,
            "lists" => Show::Lists,
            "mem" => Show::Mem,
            "version" => Show::Version,
            "state" => Show::State,
            "nodes" => Show::Nodes,
            "routes" => Show::Routes,
            _ => return None,
        })
    }
}

/// How SHUTDOWN should wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Plain SHUTDOWN: PgBouncer stops at once; Switchyard drains (see README).
    Default,
    WaitForServers,
    WaitForClients,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// An empty query string.
    Empty,
    Show(Show),
    Pause(Option<String>),
    Resume(Option<String>),
    Suspend,
    Reload,
    Reconnect(Option<String>),
    Kill(String),
    KillClient(String),
    WaitClose(Option<String>),
    Disable(String),
    Enable(String),
    Shutdown(ShutdownMode),
    Set,
}

impl Command {
    /// True for commands that only read (allowed to `console_stats_users`).
    pub fn is_read_only(&self) -> bool {
        matches!(self, Command::Empty | Command::Show(_))
    }
}

fn invalid(sql: &str) -> ClientError {
    ClientError::error(
        SqlState::SyntaxError,
        format!("invalid command '{sql}', use SHOW HELP;"),
    )
}

/// Parses one command; the error names the command as PgBouncer does.
pub fn parse(sql: &str) -> Result<Command, ClientError> {
    let trimmed = sql.trim().trim_end_matches(';').trim();
    let words: Vec<&str> = trimmed.split_whitespace().collect();
    let Some(first) = words.first() else {
        return Ok(Command::Empty);
    };
    let keyword = first.to_ascii_lowercase();
    let argument = words.get(1).map(|w| unquote(w));
    let optional = |command: fn(Option<String>) -> Command| match words.len() {
        1 | 2 => Ok(command(argument.clone())),
        _ => Err(invalid(trimmed)),
    };
    let required = |command: fn(String) -> Command| match (&argument, words.len()) {
        (Some(arg), 2) => Ok(command(arg.clone())),
        _ => Err(invalid(trimmed)),
    };
    match keyword.as_str() {
        "show" if words.len() == 2 => argument
            .as_deref()
            .map(str::to_ascii_lowercase)
            .and_then(|w| Show::from_word(&w))
            .map(Command::Show)
            .ok_or_else(|| invalid(trimmed)),
        "pause" => optional(Command::Pause),
        "resume" => optional(Command::Resume),
        "reconnect" => optional(Command::Reconnect),
        "wait_close" => optional(Command::WaitClose),
        "kill" => required(Command::Kill),
        "kill_client" => required(Command::KillClient),
        "disable" => required(Command::Disable),
        "enable" => required(Command::Enable),
        "suspend" if words.len() == 1 => Ok(Command::Suspend),
        "reload" if words.len() == 1 => Ok(Command::Reload),
        "set" => Ok(Command::Set),
        "shutdown" => match argument.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None => Ok(Command::Shutdown(ShutdownMode::Default)),
            Some("wait_for_servers") if words.len() == 2 => {
                Ok(Command::Shutdown(ShutdownMode::WaitForServers))
            }
            Some("wait_for_clients") if words.len() == 2 => {
                Ok(Command::Shutdown(ShutdownMode::WaitForClients))
            }
            _ => Err(invalid(trimmed)),
        },
        _ => Err(invalid(trimmed)),
    }
}

/// A database name may be written as an identifier in double quotes.
fn unquote(word: &str) -> String {
    word.strip_prefix('"')
        .and_then(|w| w.strip_suffix('"'))
        .map(|w| w.replace("\"\"", "\""))
        .unwrap_or_else(|| word.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_as_pgbouncer_spells_them() {
        assert_eq!(parse("SHOW POOLS;"), Ok(Command::Show(Show::Pools)));
        assert_eq!(
            parse(" show  stats_totals "),
            Ok(Command::Show(Show::StatsTotals))
        );
        assert_eq!(parse("PAUSE"), Ok(Command::Pause(None)));
        assert_eq!(
            parse("pause appdb;"),
            Ok(Command::Pause(Some("appdb".into())))
        );
        assert_eq!(parse("RESUME \"My Db\""), Err(invalid("RESUME \"My Db\"")));
        assert_eq!(
            parse("RESUME \"MyDb\""),
            Ok(Command::Resume(Some("MyDb".into())))
        );
        assert_eq!(parse("KILL_CLIENT 7"), Ok(Command::KillClient("7".into())));
        assert_eq!(
            parse("shutdown wait_for_clients"),
            Ok(Command::Shutdown(ShutdownMode::WaitForClients))
        );
        assert_eq!(parse(""), Ok(Command::Empty));
        assert_eq!(parse(";"), Ok(Command::Empty));
    }

    #[test]
    fn anything_else_is_a_syntax_error_naming_the_command() {
        for sql in [
            "select 1",
            "SHOW",
            "SHOW FOO",
            "KILL",
            "PAUSE a b",
            "SUSPEND now",
        ] {
            let error = parse(sql).expect_err(sql);
            assert_eq!(error.code, SqlState::SyntaxError, "{sql}");
            assert!(error.message.contains("use SHOW HELP"), "{}", error.message);
        }
    }
}
