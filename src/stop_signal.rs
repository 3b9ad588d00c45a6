//! A one-shot stop flag that thousands of sessions wait on between and during
//! every transaction. A `CancellationToken` waiter takes a lock each time it is
//! polled; here a session's wait costs an atomic load and a register on its own
//! [`AtomicWaker`], and the shared lock is taken only when a session starts or
//! ends and when the signal fires.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct StopSignal {
    fired: AtomicBool,
    waiters: Mutex<HashMap<u64, Arc<AtomicWaker>>>,
    next_id: AtomicU64,
}

impl StopSignal {
    /// A signal that fires when `token` is cancelled (by whatever path).
    pub fn following(token: &CancellationToken) -> Arc<StopSignal> {
        let signal = Arc::new(StopSignal::default());
        let token = token.clone();
        let fired_by_token = Arc::clone(&signal);
        tokio::spawn(async move {
            token.cancelled().await;
            fired_by_token.fire();
        });
        signal
    }

    fn waiters(&self) -> MutexGuard<'_, HashMap<u64, Arc<AtomicWaker>>> {
        // Only inserts, removes and iteration: consistent even if poisoned.
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the flag and wakes every waiter. Idempotent.
    pub fn fire(&self) {
        // SeqCst pairs with the load in `poll_fired` after registering: either the
        // waiter sees the flag, or its waker is registered before the wake below.
        self.fired.store(true, Ordering::SeqCst);
        for waker in self.waiters().values() {
            waker.wake();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// A handle for one waiting task; it leaves the waiter list when dropped.
    pub fn subscribe(self: &Arc<Self>) -> StopWaiter {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let waker = Arc::new(AtomicWaker::new());
        self.waiters().insert(id, Arc::clone(&waker));
        StopWaiter {
            signal: Arc::clone(self),
            id,
            waker,
        }
    }
}

pub struct StopWaiter {
    signal: Arc<StopSignal>,
    id: u64,
    waker: Arc<AtomicWaker>,
}

impl StopWaiter {
    pub fn is_fired(&self) -> bool {
        self.signal.is_fired()
    }

    pub fn poll_fired(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.is_fired() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.signal.is_fired() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Resolves once the signal has fired; cheap to make for every wait.
    pub fn fired(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| self.poll_fired(cx))
    }
}

impl Drop for StopWaiter {
    fn drop(&mut self) {
        self.signal.waiters().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_waiter_wakes_when_the_signal_fires() {
        let signal = Arc::new(StopSignal::default());
        let waiter = signal.subscribe();
        let waiting = tokio::spawn(async move {
            waiter.fired().await;
            waiter.is_fired()
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "resolved before the signal fired");
        signal.fire();
        let seen = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("waiter was not woken")
            .expect("waiter task panicked");
        assert!(seen);
    }

    #[tokio::test]
    async fn following_a_token_fires_on_cancel_and_waiters_leave_on_drop() {
        let token = CancellationToken::new();
        let signal = StopSignal::following(&token);
        let early = signal.subscribe();
        let dropped = signal.subscribe();
        drop(dropped);
        assert_eq!(signal.waiters().len(), 1);
        assert!(!early.is_fired());
        token.cancel();
        tokio::time::timeout(Duration::from_secs(2), early.fired())
            .await
            .expect("signal did not follow the token");
        // A waiter made after the fact sees it at once.
        let late = signal.subscribe();
        tokio::time::timeout(Duration::from_millis(100), late.fired())
            .await
            .expect("late waiter did not see the fired signal");
    }
}
