//! Where key derivation (PBKDF2, a few to tens of milliseconds of one core each)
//! runs: on tokio's blocking pool, at most [`KDF_THREADS`] at a time, never on an
//! async worker. A burst of server logins or a reload with many plaintext
//! passwords would otherwise stall every session scheduled on the same worker.

use tokio::sync::Semaphore;

/// Derivations that may run at once. Two: the proxy's async workers keep the
/// other cores, and logins queue here (under their connect timeout) rather
/// than growing tokio's blocking pool towards its 512-thread limit.
pub const KDF_THREADS: usize = 2;

/// One CPU budget for the whole process, like the thread pool it bounds; it
/// holds no state a test could depend on.
static SLOTS: Semaphore = Semaphore::const_new(KDF_THREADS);

/// Why derivation did not return.
#[derive(Debug, thiserror::Error)]
#[error("key derivation did not finish: {0}")]
pub struct KdfError(String);

/// Runs `work` on the blocking pool once a slot is free and returns its result.
/// If the caller gives up waiting (a timeout), a derivation already started
/// finishes on its thread and still holds its slot until then, so the bound holds.
pub async fn run<T, F>(work: F) -> Result<T, KdfError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let permit = SLOTS
        .acquire()
        .await
        .map_err(|_| KdfError("the derivation slots are closed".into()))?;
    tokio::task::spawn_blocking(move || {
        let _slot = permit;
        work()
    })
    .await
    .map_err(|e| KdfError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_kdf_threads_run_at_once() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        // The first KDF_THREADS jobs meet at a barrier, so that many provably
        // run together while the others are queued behind them.
        let barrier = Arc::new(Barrier::new(KDF_THREADS));
        let jobs: Vec<_> = (0..KDF_THREADS * 3)
            .map(|i| {
                let (running, most, barrier) = (
                    Arc::clone(&running),
                    Arc::clone(&most),
                    Arc::clone(&barrier),
                );
                tokio::spawn(run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    if i < KDF_THREADS {
                        barrier.wait();
                    }
                    running.fetch_sub(1, Ordering::SeqCst);
                    i
                }))
            })
            .collect();
        let mut done = Vec::new();
        for job in jobs {
            done.push(job.await.expect("task").expect("derivation"));
        }
        done.sort_unstable();
        assert_eq!(done, (0..KDF_THREADS * 3).collect::<Vec<_>>());
        assert!(most.load(Ordering::SeqCst) <= KDF_THREADS, "{most:?}");
    }
}
