//! Query cancellation. Each client gets a BackendKeyData minted here; the registry
//! maps it to the server connection the client is using at that moment, and a
//! CancelRequest arriving on a new connection is forwarded to that server with the
//! server's own key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::messages;

/// Where a cancel for one client must go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CancelTarget {
    /// `host:port` of the server.
    pub address: String,
    pub pid: i32,
    pub secret: i32,
}

/// The server a client uses now; shared by the registry and the client's session.
type TargetSlot = Arc<Mutex<Option<Arc<CancelTarget>>>>;

struct Entry {
    secret: i32,
    target: TargetSlot,
}

#[derive(Default)]
pub struct CancelRegistry {
    entries: Mutex<HashMap<i32, Entry>>,
}

/// A client's registered key; unregisters itself when dropped. Pointing it at
/// another server (transaction mode does it twice per transaction) takes only the
/// client's own uncontended lock, never the registry's.
pub struct Registration {
    registry: Arc<CancelRegistry>,
    target: TargetSlot,
    pub pid: i32,
    pub secret: i32,
}

impl CancelRegistry {
    fn entries(&self) -> MutexGuard<'_, HashMap<i32, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent (every
        // critical section is a single insert/get/remove), so a poisoned lock is used as is.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mints a fresh, unique key for a client.
    pub fn register(self: &Arc<Self>) -> Registration {
        let mut rng = rand::thread_rng();
        let mut entries = self.entries();
        loop {
            let pid = rng.gen_range(1..i32::MAX);
            if let std::collections::hash_map::Entry::Vacant(slot) = entries.entry(pid) {
                let secret = rng.gen();
                let target = TargetSlot::default();
                slot.insert(Entry {
                    secret,
                    target: Arc::clone(&target),
                });
                return Registration {
                    registry: Arc::clone(self),
                    target,
                    pid,
                    secret,
                };
            }
        }
    }

    /// The target for a cancel key, if the key is known and the secret matches.
    pub fn lookup(&self, pid: i32, secret: &[u8]) -> Option<Arc<CancelTarget>> {
        let entries = self.entries();
        let entry = entries.get(&pid)?;
        let matches: bool = entry.secret.to_be_bytes().ct_eq(secret).into();
        if matches {
            lock_slot(&entry.target).clone()
        } else {
            None
        }
    }

    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Registration {
    /// Points this client's key at the server it now uses (None: no server).
    pub fn set_target(&self, target: Option<Arc<CancelTarget>>) {
        *lock_slot(&self.target) = target;
    }
}

fn lock_slot(slot: &TargetSlot) -> MutexGuard<'_, Option<Arc<CancelTarget>>> {
    // Only ever holds an assignment or a clone: consistent even if poisoned.
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.entries().remove(&self.pid);
    }
}

/// Sends a CancelRequest to a server and waits (bounded) for it to close the socket.
pub async fn send_cancel(target: &CancelTarget, timeout: Duration) -> std::io::Result<()> {
    let exchange = async {
        let mut stream = TcpStream::connect(&target.address).await?;
        stream
            .write_all(&messages::cancel_request(target.pid, target.secret))
            .await?;
        let mut sink = [0u8; 64];
        while stream.read(&mut sink).await? > 0 {}
        Ok(())
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "cancel timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_targets_and_vanish_on_drop() {
        let registry = Arc::new(CancelRegistry::default());
        let registration = registry.register();
        let secret = registration.secret.to_be_bytes();
        assert_eq!(
            registry.lookup(registration.pid, &secret),
            None,
            "no server yet"
        );
        let target = CancelTarget {
            address: "127.0.0.1:5432".into(),
            pid: 99,
            secret: 7,
        };
        registration.set_target(Some(Arc::new(target.clone())));
        assert_eq!(
            registry.lookup(registration.pid, &secret).as_deref(),
            Some(&target)
        );
        let wrong = (registration.secret ^ 1).to_be_bytes();
        assert_eq!(registry.lookup(registration.pid, &wrong), None);
        assert_eq!(registry.lookup(registration.pid, &secret[..3]), None);
        let pid = registration.pid;
        drop(registration);
        assert_eq!(registry.lookup(pid, &secret), None);
        assert!(registry.is_empty());
    }
}
