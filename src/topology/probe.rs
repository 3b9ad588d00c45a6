//! What one health round found about one node, whichever discovery asked
//! ([`super::patroni`] or [`super::sql_probe`]), and what only a whole round can
//! tell: how far each replica's replay is behind the primary. Pure; no I/O here.

use super::health::{Check, Refusal};

/// One health round's findings for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub primary: Check,
    pub replica: Check,
    /// The node's timeline, when it claims the primary role (settles split brain).
    pub timeline: Option<u64>,
    pub wal: Wal,
}

/// WAL positions a node reported, as byte offsets (the LSN `X/Y` is `X << 32 | Y`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wal {
    /// A primary's current write position.
    pub current: Option<u64>,
    /// A replica's last replayed position.
    pub replayed: Option<u64>,
}

impl Probe {
    /// Both roles failed for the same reason (no usable answer from the node).
    pub fn failed(reason: impl Into<String>) -> Probe {
        let failed = Check::Failed(reason.into());
        Probe {
            primary: failed.clone(),
            replica: failed,
            timeline: None,
            wal: Wal::default(),
        }
    }

    /// A one-line description of what went wrong, if anything did: no answer, or a
    /// server that says it cannot serve now.
    pub fn error(&self) -> Option<String> {
        [&self.primary, &self.replica]
            .into_iter()
            .find_map(|check| match check {
                Check::Failed(e) => Some(e.clone()),
                Check::No(Refusal::Unavailable(message)) => Some(message.clone()),
                _ => None,
            })
    }
}

/// Parses a PostgreSQL LSN written `X/Y` (two hexadecimal halves) into a byte offset.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.trim().split_once('/')?;
    // from_str_radix alone would accept a sign ("+1").
    let hex = |part: &str| {
        if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(part, 16).ok()
    };
    Some(u64::from(hex(high)?) << 32 | u64::from(hex(low)?))
}

/// Each node's replay lag behind the primary in this round, in bytes: the primary's
/// current position minus the node's replayed position (0 when the replica read its
/// position after the primary moved on). Known only when exactly one node confirmed
/// the primary role in this round and reported its position, since a lag measured
/// against a former or disputed primary means nothing; the primary's own entry is
/// `None`.
pub fn replica_lags(probes: &[Probe]) -> Vec<Option<u64>> {
    let mut claimants = probes
        .iter()
        .enumerate()
        .filter(|(_, p)| p.primary == Check::Yes);
    let primary = match (claimants.next(), claimants.next()) {
        (Some((index, probe)), None) => probe.wal.current.map(|current| (index, current)),
        _ => None,
    };
    probes
        .iter()
        .enumerate()
        .map(|(i, probe)| match primary {
            Some((index, current)) if index != i => probe
                .wal
                .replayed
                .map(|replayed| current.saturating_sub(replayed)),
            _ => None,
        })
        .collect()
}

/// `cluster.max_replica_lag`, measured by the proxy: a replica whose replay is
/// further behind this round's primary than `max_bytes` is refused the replica role.
/// Patroni's own `/replica?lag=` compares the leader's position in the DCS with
/// what the replica received, so a replica whose replay is paused or slow passes it;
/// this check catches that too (both apply with Patroni discovery).
pub fn refuse_lagging(probes: &mut [Probe], max_bytes: u64) {
    let lags = replica_lags(probes);
    for (probe, lag) in probes.iter_mut().zip(lags) {
        if let Some(lag_bytes) = lag.filter(|&lag| lag > max_bytes) {
            if probe.replica == Check::Yes {
                probe.replica = Check::No(Refusal::Lagging {
                    lag_bytes,
                    max_bytes,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(primary: bool, current: Option<u64>, replayed: Option<u64>) -> Probe {
        let check = |yes| {
            if yes {
                Check::Yes
            } else {
                Check::No(Refusal::InRecovery)
            }
        };
        Probe {
            primary: check(primary),
            replica: check(!primary),
            timeline: None,
            wal: Wal { current, replayed },
        }
    }

    #[test]
    fn lsns_parse_as_byte_offsets() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("0/3000148"), Some(0x300_0148));
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn(" 1/0 "), Some(1 << 32));
        assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF"), Some(u64::MAX));
        for bad in [
            "",
            "0",
            "/1",
            "1/",
            "x/1",
            "1/-1",
            "1/+1",
            "100000000/0",
            "1/2/3",
        ] {
            assert_eq!(parse_lsn(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn lag_is_measured_against_the_one_primary_of_the_round() {
        let round = [
            probe(true, Some(1000), None),
            probe(false, None, Some(400)),
            probe(false, None, Some(1200)),
            probe(false, None, None),
        ];
        assert_eq!(replica_lags(&round), vec![None, Some(600), Some(0), None]);

        let two_primaries = [probe(true, Some(1000), None), probe(true, Some(5), Some(1))];
        assert_eq!(replica_lags(&two_primaries), vec![None, None]);

        let no_position = [probe(true, None, None), probe(false, None, Some(1))];
        assert_eq!(replica_lags(&no_position), vec![None, None]);

        let failed = [Probe::failed("down"), probe(false, None, Some(1))];
        assert_eq!(replica_lags(&failed), vec![None, None]);
    }

    #[test]
    fn errors_name_failures_and_unavailable_servers() {
        assert_eq!(
            Probe::failed("timed out").error().as_deref(),
            Some("timed out")
        );
        let mut shutting_down = probe(false, None, None);
        shutting_down.replica = Check::No(Refusal::Unavailable("shutting down".into()));
        assert_eq!(shutting_down.error().as_deref(), Some("shutting down"));
        assert_eq!(probe(true, Some(1), None).error(), None);
    }
}
