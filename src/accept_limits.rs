//! Admission at accept: how many connections may be open without having finished
//! authentication, in all and per client address. A connection takes a place when
//! it is accepted and gives it back when its login ends (either way), so a flood of
//! idle or slow sockets from one address cannot take more than its share, and all
//! of them together cannot take the proxy's file descriptors or
//! `max_client_connections` from clients that log in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::ClientConfig;

/// The places taken, in all and per address.
#[derive(Default)]
pub struct Admission {
    total: AtomicUsize,
    per_source: Mutex<HashMap<IpAddr, u32>>,
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crowded {
    /// `client.max_unauthenticated` connections are logging in already.
    Total(u32),
    /// `client.max_unauthenticated_per_source` from this address are.
    Source(u32),
}

impl Crowded {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Crowded::Total(_) => "unauthenticated_limit",
            Crowded::Source(_) => "source_limit",
        }
    }

    pub fn message(self) -> String {
        match self {
            Crowded::Total(limit) => format!(
                "too many connections are logging in (client.max_unauthenticated is {limit})"
            ),
            Crowded::Source(limit) => format!(
                "too many connections from this address are logging in \
                 (client.max_unauthenticated_per_source is {limit})"
            ),
        }
    }
}

impl Admission {
    /// Takes a place for a connection from `source` under the limits of `config`
    /// (read at each accept, so a reload applies to the next connection).
    pub fn admit(
        self: &Arc<Self>,
        source: IpAddr,
        config: &ClientConfig,
    ) -> Result<LoggingIn, Crowded> {
        let limit = config.max_unauthenticated;
        if self.total.fetch_add(1, Ordering::Relaxed) >= limit as usize {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Crowded::Total(limit));
        }
        let per_source_limit = config.max_unauthenticated_per_source;
        let mut per_source = self
            .per_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = per_source.entry(source).or_insert(0);
        if *count >= per_source_limit {
            drop(per_source);
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Crowded::Source(per_source_limit));
        }
        *count += 1;
        Ok(LoggingIn {
            admission: Arc::clone(self),
            source,
        })
    }

    /// Connections that have not finished authentication now.
    pub fn logging_in(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

/// A connection's place while it logs in; dropping it gives the place back.
pub struct LoggingIn {
    admission: Arc<Admission>,
    source: IpAddr,
}

impl Drop for LoggingIn {
    fn drop(&mut self) {
        let mut per_source = self
            .admission
            .per_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = per_source.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                // Addresses that come and go leave nothing behind.
                per_source.remove(&self.source);
            }
        }
        drop(per_source);
        self.admission.total.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(total: u32, per_source: u32) -> ClientConfig {
        ClientConfig {
            max_unauthenticated: total,
            max_unauthenticated_per_source: per_source,
            ..ClientConfig::default()
        }
    }

    #[test]
    fn places_are_limited_in_all_and_per_address_and_given_back() {
        let admission = Arc::new(Admission::default());
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        let limits = config(3, 2);
        let first = admission.admit(a, &limits).ok();
        let second = admission.admit(a, &limits).ok();
        assert!(first.is_some() && second.is_some());
        assert_eq!(admission.admit(a, &limits).err(), Some(Crowded::Source(2)));
        let third = admission.admit(b, &limits).ok();
        assert!(third.is_some());
        assert_eq!(admission.admit(b, &limits).err(), Some(Crowded::Total(3)));
        assert_eq!(admission.logging_in(), 3);
        drop(first);
        assert_eq!(admission.logging_in(), 2);
        assert!(admission.admit(a, &limits).is_ok(), "a place came back");
        drop((second, third));
        assert_eq!(admission.logging_in(), 0);
        let map = admission
            .per_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        assert!(map.is_empty(), "no address stays behind: {map:?}");
    }
}
