//! Checks the startup `options` parameter the way PostgreSQL's
//! `process_postgres_switches` reads it (getopt over its words), so that what
//! PostgreSQL refuses is refused through Switchyard too, with the same SQLSTATE.
//! Switchyard applies only `-c name=value` and `--name=value` (as settings on
//! every server the client uses, `server::params`); a server never sees the
//! client's `options` itself, so without this check a malformed or unknown switch
//! would be dropped silently where PostgreSQL ends the connection.

use crate::protocol::{ClientError, SqlState};
use crate::server::params::split_options;

/// Switches that take an argument (PostgreSQL 15's getopt string
/// `B:bc:C:D:d:EeFf:h:ijk:lN:nOPp:r:S:sTt:v:W:-:`).
const WITH_ARGUMENT: &[u8] = b"BcCDdfhkNprStvW-";
/// Switches without one.
const WITHOUT_ARGUMENT: &[u8] = b"bEeFijlnOPsT";

/// Refuses `options` PostgreSQL would refuse at login, and those with switches
/// Switchyard cannot carry (anything but `-c`/`--`, unless PostgreSQL ignores it
/// for a client too).
pub(super) fn check(options: &str) -> Result<(), ClientError> {
    let words = split_options(options);
    let mut words = words.iter();
    while let Some(word) = words.next() {
        let Some(switches) = word.strip_prefix('-').filter(|s| !s.is_empty()) else {
            return Err(invalid_argument(word));
        };
        for (i, switch) in switches.bytes().enumerate() {
            if WITH_ARGUMENT.contains(&switch) {
                let joined = &switches[i + 1..];
                let argument = if joined.is_empty() {
                    words.next().ok_or_else(|| invalid_argument(word))?.as_str()
                } else {
                    joined
                };
                return_if_refused(switch as char, argument)?;
                break;
            }
            if !WITHOUT_ARGUMENT.contains(&switch) {
                return Err(invalid_argument(word));
            }
            return_if_refused(switch as char, "")?;
        }
    }
    Ok(())
}

/// Switch letters are compared as chars: they are command-line letters, not
/// protocol message tags.
fn return_if_refused(switch: char, argument: &str) -> Result<(), ClientError> {
    match switch {
        'c' | '-' if !argument.contains('=') => {
            let shown = if switch == 'c' {
                format!("-c {argument}")
            } else {
                format!("--{argument}")
            };
            Err(ClientError::fatal(
                SqlState::SyntaxError,
                format!("{shown} requires a value"),
            ))
        }
        'c' | '-' => Ok(()),
        // PostgreSQL ignores these for a client (they only mean something to a
        // server started from the command line).
        'b' | 'C' | 'D' | 'E' | 'j' | 'n' | 'r' | 'T' | 'v' => Ok(()),
        'B' => restart_only("shared_buffers"),
        'h' | 'i' => restart_only("listen_addresses"),
        'k' => restart_only("unix_socket_directories"),
        'N' => restart_only("max_connections"),
        'p' => restart_only("port"),
        'F' => not_now("fsync"),
        'l' => not_now("ssl"),
        other => Err(ClientError::fatal(
            SqlState::FeatureNotSupported,
            format!(
                "the startup option -{} is not supported through Switchyard",
                other
            ),
        )
        .with_hint("Give settings as -c name=value or --name=value.")),
    }
}

fn invalid_argument(word: &str) -> ClientError {
    ClientError::fatal(
        SqlState::SyntaxError,
        format!("invalid command-line argument for server process: {word}"),
    )
    .with_hint("Try \"postgres --help\" for more information.")
}

fn restart_only(name: &str) -> Result<(), ClientError> {
    Err(ClientError::fatal(
        SqlState::CantChangeRuntimeParam,
        format!("parameter \"{name}\" cannot be changed without restarting the server"),
    ))
}

fn not_now(name: &str) -> Result<(), ClientError> {
    Err(ClientError::fatal(
        SqlState::CantChangeRuntimeParam,
        format!("parameter \"{name}\" cannot be changed now"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(options: &str) -> Option<SqlState> {
        check(options).err().map(|e| e.code)
    }

    #[test]
    fn settings_and_switches_postgres_ignores_pass() {
        for ok in [
            "",
            "-c a=b",
            "-ca=b",
            "--a=b -c x=y\\ z",
            "--search-path=a,b",
            "-c a=",
            "-D /data -v 3 -n",
            "-bE",
        ] {
            assert_eq!(code(ok), None, "{ok:?}");
        }
    }

    #[test]
    fn what_postgres_refuses_is_refused_with_its_sqlstate() {
        let cases = [
            ("-c", SqlState::SyntaxError),
            ("-c name", SqlState::SyntaxError),
            ("--name", SqlState::SyntaxError),
            ("-Z", SqlState::SyntaxError),
            ("word", SqlState::SyntaxError),
            ("-", SqlState::SyntaxError),
            ("-c a=b stray", SqlState::SyntaxError),
            ("-B 100", SqlState::CantChangeRuntimeParam),
            ("-p5433", SqlState::CantChangeRuntimeParam),
            ("-nF", SqlState::CantChangeRuntimeParam),
            ("-S 1MB", SqlState::FeatureNotSupported),
        ];
        for (options, expected) in cases {
            assert_eq!(code(options), Some(expected), "{options:?}");
        }
    }
}
