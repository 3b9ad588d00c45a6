//! A session's own figures: when it started, what the relay saw, transactions
//! served, and whether it counts as active (holding a server) on its listener.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::relay::RelayStats;
use crate::context::ListenerState;

pub(super) struct SessionCounters {
    pub started: Instant,
    pub stats: RelayStats,
    pub transactions: u64,
    /// Counted as active on its listener (holding a server); see `mark_idle`.
    active: bool,
    /// When the last checkout returned: the start of the work it was for.
    pub checked_out_at: Instant,
}

impl SessionCounters {
    pub(super) fn new(started: Instant) -> SessionCounters {
        SessionCounters {
            started,
            stats: RelayStats::default(),
            transactions: 0,
            active: false,
            checked_out_at: started,
        }
    }

    /// A checkout that began at `started` returned now. The listener's shared
    /// counters are touched only when the state changes: the common checkout costs
    /// no shared writes here.
    pub(super) fn checked_out(&mut self, listener: &ListenerState, started: Instant, ok: bool) {
        let finished = Instant::now();
        self.checked_out_at = finished;
        let counters = &listener.counters;
        counters
            .metrics
            .record_checkout_wait(finished.saturating_duration_since(started));
        if ok && !self.active {
            counters.active.fetch_add(1, Ordering::Relaxed);
            self.active = true;
        }
    }

    /// The client holds no server now.
    pub(super) fn mark_idle(&mut self, listener: &ListenerState) {
        if self.active {
            listener.counters.active.fetch_sub(1, Ordering::Relaxed);
            self.active = false;
        }
    }
}
