//! The threads that serve clients: `runtime.workers` of them, each running its own
//! current-thread tokio runtime. A client's session and every socket it uses (its
//! own, and the server connection it has checked out) live on one thread, so a
//! transaction is relayed without cross-thread wake-ups or work-stealing
//! bookkeeping. The control plane (accept loops, topology polling, the admin API,
//! reloads, signals) stays on the runtime that started the proxy; each accepted
//! socket is handed to the worker serving the fewest sessions.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

thread_local! {
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The worker this thread is, or None off the workers (the control runtime, a
/// test's own runtime).
pub fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

/// What a worker thread runs on, and how many sessions it serves now.
struct Worker {
    handle: Handle,
    sessions: Arc<AtomicUsize>,
}

pub struct Workers {
    workers: Vec<Worker>,
    /// Cancelled to end every worker thread (its runtime drops the tasks left).
    stop: CancellationToken,
}

impl Workers {
    /// Starts `count` worker threads (at least one).
    pub fn start(count: usize) -> io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut workers = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let (started, handle) = std::sync::mpsc::sync_channel(1);
            let until = stop.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("switchyard-w{index}"))
                .spawn(move || {
                    CURRENT.with(|c| c.set(Some(index)));
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = started.send(Err(e));
                            return;
                        }
                    };
                    let _ = started.send(Ok(runtime.handle().clone()));
                    runtime.block_on(until.cancelled());
                });
            if let Err(e) = spawned {
                stop.cancel();
                return Err(e);
            }
            let handle = handle
                .recv()
                .map_err(|_| io::Error::other("a worker thread ended while starting"))
                .and_then(|started| started)
                .inspect_err(|_| stop.cancel())?;
            workers.push(Worker {
                handle,
                sessions: Arc::new(AtomicUsize::new(0)),
            });
        }
        Ok(Workers { workers, stop })
    }

    pub fn count(&self) -> usize {
        self.workers.len()
    }

    /// Client sessions each worker serves now, for `/status`.
    pub fn sessions_per_worker(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.sessions.load(Ordering::Relaxed))
            .collect()
    }

    /// Runs a client's session on the worker serving the fewest sessions. The
    /// socket leaves the caller's reactor here and joins the worker's there
    /// (`serve` gets it registered with the worker); tracked by `tasks`, so a
    /// shutdown waits for it.
    pub fn spawn_client<S, F>(&self, tasks: &TaskTracker, socket: tokio::net::TcpStream, serve: S)
    where
        S: FnOnce(tokio::net::TcpStream) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let socket = match socket.into_std() {
            Ok(socket) => socket,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand an accepted connection to a worker");
                return;
            }
        };
        let worker = self.least_busy();
        let sessions = Arc::clone(&worker.sessions);
        sessions.fetch_add(1, Ordering::Relaxed);
        let counted = SessionCount(sessions);
        tasks.spawn_on(
            async move {
                let _counted = counted;
                match tokio::net::TcpStream::from_std(socket) {
                    Ok(socket) => serve(socket).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "a worker cannot take an accepted connection")
                    }
                }
            },
            &worker.handle,
        );
    }

    fn least_busy(&self) -> &Worker {
        let mut best = &self.workers[0];
        let mut fewest = usize::MAX;
        for worker in &self.workers {
            let sessions = worker.sessions.load(Ordering::Relaxed);
            if sessions < fewest {
                best = worker;
                fewest = sessions;
            }
        }
        best
    }

    /// Ends the worker threads; tasks still on them are dropped.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One session counted on its worker while it lives.
struct SessionCount(Arc<AtomicUsize>);

impl Drop for SessionCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_spread_over_workers_and_run_on_worker_threads() {
        let workers = Workers::start(2).expect("workers start");
        assert_eq!(workers.count(), 2);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let tasks = TaskTracker::new();
        let (seen, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(tokio::net::TcpStream::connect(address).await.unwrap());
            let (socket, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            workers.spawn_client(&tasks, socket, move |socket| async move {
                let _ = seen.send(current());
                // Held open until the client hangs up: the worker's count includes it.
                let mut byte = [0u8; 1];
                let _ = socket.readable().await;
                let _ = socket.try_read(&mut byte);
            });
            let _ = seen_rx.recv().await;
        }
        assert_eq!(workers.sessions_per_worker(), [2, 2], "least busy first");
        drop(clients);
        tasks.close();
        tasks.wait().await;
        assert_eq!(workers.sessions_per_worker(), [0, 0]);
        assert_eq!(current(), None, "the test's own thread is no worker");
    }

    #[tokio::test]
    async fn a_session_runs_on_the_worker_it_was_given() {
        let workers = Workers::start(3).expect("workers start");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        let tasks = TaskTracker::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        workers.spawn_client(&tasks, socket, move |_socket| async move {
            let name = std::thread::current().name().map(str::to_string);
            let _ = tx.send((current(), name));
        });
        let (worker, name) = rx.await.expect("the session ran");
        assert_eq!(worker, Some(0));
        assert_eq!(name.as_deref(), Some("switchyard-w0"));
        workers.stop();
    }
}
