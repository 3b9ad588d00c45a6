//! The proxy-wide budget of bytes held for clients beyond the relay's own read
//! buffers: request copies kept for a failover resend and server replies held back
//! to judge them. Per-client limits bound one client; this bounds them all, so many
//! clients at once cannot take the proxy's memory. Taking from an exhausted budget
//! fails (the caller then gives up what it wanted to hold), it never waits.

use std::sync::atomic::{AtomicUsize, Ordering};

pub struct BufferBudget {
    limit: AtomicUsize,
    used: AtomicUsize,
}

impl BufferBudget {
    pub fn new(limit: usize) -> BufferBudget {
        BufferBudget {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
        }
    }

    /// Takes `bytes` if the budget has them.
    pub fn try_take(&self, bytes: usize) -> bool {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > self.limit.load(Ordering::Relaxed) {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// A reload changed the limit; what is held stays held.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }
}

/// What one holder took from a budget; given back when dropped.
pub struct Reservation<'a> {
    budget: &'a BufferBudget,
    held: usize,
}

impl<'a> Reservation<'a> {
    pub fn new(budget: &'a BufferBudget) -> Reservation<'a> {
        Reservation { budget, held: 0 }
    }

    /// Takes `bytes` more; false (and nothing taken) when the budget is spent.
    pub fn grow(&mut self, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        let taken = self.budget.try_take(bytes);
        if taken {
            self.held += bytes;
        }
        taken
    }

    pub fn release_all(&mut self) {
        self.budget.give_back(std::mem::take(&mut self.held));
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.release_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_one_limit_and_give_back_on_drop() {
        let budget = BufferBudget::new(100);
        let mut a = Reservation::new(&budget);
        assert!(a.grow(60));
        {
            let mut b = Reservation::new(&budget);
            assert!(!b.grow(50), "over the shared limit");
            assert!(b.grow(40));
            assert_eq!(budget.used(), 100);
        }
        assert_eq!(budget.used(), 60, "b gave its share back");
        a.release_all();
        assert_eq!(budget.used(), 0);
        budget.set_limit(10);
        assert!(!a.grow(11));
    }
}
