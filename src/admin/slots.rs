//! The cap on admin HTTP connections served at once (`admin.max_connections`, read
//! at every accept so a reload changes it). A connection over the cap is answered
//! `503` by a minimal responder, itself capped at [`MAX_REFUSING`]; past that it is
//! closed unanswered, so a flood of sockets costs a bounded number of tasks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Connections being answered 503 at once.
pub(super) const MAX_REFUSING: usize = 16;

#[derive(Default)]
pub(super) struct Slots {
    serving: AtomicUsize,
    refusing: AtomicUsize,
}

/// What to do with an accepted connection; the slot is freed on drop.
pub(super) enum Admission {
    Serve(Slot),
    Refuse(Slot),
    Drop,
}

pub(super) struct Slot {
    slots: Arc<Slots>,
    serving: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let counter = if self.serving {
            &self.slots.serving
        } else {
            &self.slots.refusing
        };
        counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes one of `limit` places from `counter`, if one is free.
fn take(counter: &AtomicUsize, limit: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

impl Slots {
    pub(super) fn admit(self: &Arc<Self>, max_connections: usize) -> Admission {
        let slot = |serving| Slot {
            slots: Arc::clone(self),
            serving,
        };
        if take(&self.serving, max_connections) {
            Admission::Serve(slot(true))
        } else if take(&self.refusing, MAX_REFUSING) {
            Admission::Refuse(slot(false))
        } else {
            Admission::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_given_back_when_a_slot_drops() {
        let slots = Arc::new(Slots::default());
        let first = slots.admit(1);
        assert!(matches!(first, Admission::Serve(_)));
        let refused: Vec<_> = (0..MAX_REFUSING).map(|_| slots.admit(1)).collect();
        assert!(refused.iter().all(|a| matches!(a, Admission::Refuse(_))));
        assert!(matches!(slots.admit(1), Admission::Drop));
        drop(first);
        assert!(matches!(slots.admit(1), Admission::Serve(_)));
        drop(refused);
        assert!(matches!(slots.admit(0), Admission::Refuse(_)));
    }
}
