//! Query cancellation. Each client gets a BackendKeyData minted here; the registry
//! maps it to the server connection the client is using at that moment, and a
//! CancelRequest arriving on a new connection is forwarded to that server with the
//! server's own key. Behind a VIP a client's CancelRequest (a new connection) can
//! reach the other instance of a pair, so each key also names the instance that
//! minted it, and a key minted by a configured peer is passed on to that peer.
//!
//! # Key encoding
//! The 32-bit process id of a minted key is laid out as
//!
//! ```text
//!  bit 31      bits 30..24         bits 23..0
//! [relayed]   [peer id, 0..=127]  [random, non-zero, unique among live keys]
//! ```
//!
//! - The peer id is the minting instance's `peer_id` (0: an instance without
//!   peering, whose keys are never passed on).
//! - Clients only ever see `relayed = 0`, so their process ids are positive, as
//!   PostgreSQL's are. An instance that passes a cancel on to a peer sets the bit,
//!   and a relayed cancel is never passed on again: one hop at most, so even
//!   peers configured inconsistently cannot bounce a cancel between them.
//! - 24 random bits leave room for 16 million live keys per instance (the
//!   registry redraws on collision); the secret stays a full random 32 bits,
//!   checked in constant time by the owner, so passing a key on reveals nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::PeerConfig;
use crate::protocol::messages;

use crate::config::MAX_PEER_ID;

const RELAYED_BIT: u32 = 1 << 31;
const PEER_SHIFT: u32 = 24;
const SERIAL_MASK: u32 = (1 << PEER_SHIFT) - 1;

/// A process id as it arrives in a CancelRequest, split into its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPid {
    /// The key as minted (relayed bit clear): what the registry is keyed by.
    pub pid: i32,
    /// `peer_id` of the instance that minted it.
    pub peer: u32,
    /// Another instance passed this request on; it must not travel further.
    pub relayed: bool,
}

impl KeyPid {
    pub fn decode(wire: i32) -> KeyPid {
        let bits = wire as u32;
        KeyPid {
            pid: (bits & !RELAYED_BIT) as i32,
            peer: (bits & !RELAYED_BIT) >> PEER_SHIFT,
            relayed: bits & RELAYED_BIT != 0,
        }
    }

    /// The process id to send when passing this request on to a peer.
    pub fn relayed_wire(&self) -> i32 {
        (self.pid as u32 | RELAYED_BIT) as i32
    }
}

/// A minted process id: `peer` in the peer bits, `serial` (non-zero, 24 bits) below.
fn mint_pid(peer: u32, serial: u32) -> i32 {
    ((peer << PEER_SHIFT) | (serial & SERIAL_MASK)) as i32
}

/// This instance's place among its peers, from the current config.
pub struct Peering<'a> {
    pub own_id: u32,
    pub peers: &'a [PeerConfig],
}

/// What a CancelRequest calls for.
#[derive(Debug, PartialEq, Eq)]
pub enum CancelRoute {
    /// One of our clients: cancel on the server it uses now.
    Local(CancelTarget),
    /// Minted by a configured peer: send it this request (relayed bit set).
    Peer(CancelTarget),
    /// Nothing to cancel; why.
    Ignore(&'static str),
}

/// Where a cancel for one client must go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CancelTarget {
    /// `host:port` of the server.
    pub address: String,
    pub pid: i32,
    pub secret: i32,
}

/// The server a client uses now; shared by the registry and the client's session.
///
/// Transaction mode points it at a server and back at none twice per transaction,
/// so that is two relaxed stores of the backend key. The address is written only
/// when the client moves to a server at another address. A cancel racing with a
/// move may pair a key with the other server's address; PostgreSQL ignores a key it
/// did not issue, so the worst case is the cancel a race allows anyway.
#[derive(Default)]
struct SlotState {
    /// The server backend's key, pid in the high half and secret in the low; 0 when
    /// the client uses no server (PostgreSQL's pids are positive).
    backend_key: AtomicU64,
    /// `host:port` of the server the key was last set from.
    address: Mutex<String>,
}

type TargetSlot = Arc<SlotState>;

fn pack_key(pid: i32, secret: i32) -> u64 {
    (u64::from(pid as u32) << 32) | u64::from(secret as u32)
}

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

    /// Mints a fresh, unique key for a client, carrying this instance's `peer_id`
    /// (see the module doc for the layout).
    pub fn register(self: &Arc<Self>, peer_id: u32) -> Registration {
        // Validation keeps peer_id within 7 bits; were it not, 0 (no peering) is
        // the value that cannot make a key look like another instance's.
        let peer_id = if peer_id <= MAX_PEER_ID { peer_id } else { 0 };
        let mut rng = rand::thread_rng();
        let mut entries = self.entries();
        loop {
            let pid = mint_pid(peer_id, rng.gen_range(1..=SERIAL_MASK));
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
    pub fn lookup(&self, pid: i32, secret: &[u8]) -> Option<CancelTarget> {
        let entries = self.entries();
        let entry = entries.get(&pid)?;
        let matches: bool = entry.secret.to_be_bytes().ct_eq(secret).into();
        if !matches {
            return None;
        }
        let key = entry.target.backend_key.load(Ordering::Acquire);
        if key == 0 {
            return None;
        }
        let address = lock_address(&entry.target).clone();
        Some(CancelTarget {
            address,
            pid: (key >> 32) as u32 as i32,
            secret: key as u32 as i32,
        })
    }

    /// Decides what a CancelRequest calls for: our own key, a key to pass on to
    /// the configured peer that minted it, or nothing (with the reason, for the log).
    /// Our own keys are looked up first, whatever their peer bits, so keys minted
    /// before a reload changed `peer_id` still work.
    pub fn route(&self, wire_pid: i32, secret: &[u8], peering: &Peering<'_>) -> CancelRoute {
        let key = KeyPid::decode(wire_pid);
        if let Some(target) = self.lookup(key.pid, secret) {
            return CancelRoute::Local(target);
        }
        if key.relayed {
            return CancelRoute::Ignore("relayed by a peer, but no such active session here");
        }
        if key.peer == 0 || key.peer == peering.own_id {
            return CancelRoute::Ignore("no such active session");
        }
        let Ok(secret) = <[u8; 4]>::try_from(secret) else {
            return CancelRoute::Ignore("not a Switchyard key (secret is not 4 bytes)");
        };
        match peering.peers.iter().find(|p| p.id == key.peer) {
            Some(peer) => CancelRoute::Peer(CancelTarget {
                address: peer.address.clone(),
                pid: key.relayed_wire(),
                secret: i32::from_be_bytes(secret),
            }),
            None => CancelRoute::Ignore("minted by a peer id that is not configured"),
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
    pub fn set_target(&self, target: Option<&CancelTarget>) {
        let Some(target) = target else {
            self.target.backend_key.store(0, Ordering::Release);
            return;
        };
        {
            let mut address = lock_address(&self.target);
            if *address != target.address {
                address.clone_from(&target.address);
            }
        }
        self.target
            .backend_key
            .store(pack_key(target.pid, target.secret), Ordering::Release);
    }
}

fn lock_address(slot: &SlotState) -> MutexGuard<'_, String> {
    // Only ever holds an assignment or a clone: consistent even if poisoned.
    slot.address.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.entries().remove(&self.pid);
    }
}

/// Sends a CancelRequest to a server (or a peer instance) and waits (bounded) for it
/// to close the socket: a peer closes once it has passed the request on.
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
        let registration = registry.register(0);
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
        registration.set_target(Some(&target));
        assert_eq!(
            registry.lookup(registration.pid, &secret).as_ref(),
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

    #[test]
    fn minted_pids_are_positive_and_carry_the_peer_id() {
        let registry = Arc::new(CancelRegistry::default());
        let mut live = Vec::new();
        for peer in [0, 1, 2, MAX_PEER_ID] {
            for _ in 0..200 {
                let r = registry.register(peer);
                assert!(r.pid > 0, "{:#x}", r.pid);
                let key = KeyPid::decode(r.pid);
                assert_eq!((key.pid, key.peer, key.relayed), (r.pid, peer, false));
                assert_ne!(r.pid as u32 & SERIAL_MASK, 0);
                live.push(r);
            }
        }
        assert_eq!(registry.len(), 800, "every key is unique");
        // An out-of-range id (validation prevents it) never yields a negative pid.
        assert_eq!(KeyPid::decode(registry.register(300).pid).peer, 0);
    }

    #[test]
    fn relaying_sets_only_the_top_bit() {
        let pid = mint_pid(5, 0x00ab_cdef);
        assert_eq!(pid, 0x05ab_cdef);
        let key = KeyPid::decode(pid);
        let wire = key.relayed_wire();
        assert!(wire < 0);
        assert_eq!(wire as u32, 0x85ab_cdef);
        let relayed = KeyPid::decode(wire);
        assert_eq!((relayed.pid, relayed.peer, relayed.relayed), (pid, 5, true));
    }

    fn peers() -> Vec<PeerConfig> {
        vec![PeerConfig {
            id: 2,
            address: "10.0.0.12:5000".into(),
        }]
    }

    #[test]
    fn the_target_follows_the_client_from_server_to_server() {
        let registry = Arc::new(CancelRegistry::default());
        let registration = registry.register(0);
        let secret = registration.secret.to_be_bytes();
        let first = CancelTarget {
            address: "10.0.0.1:5432".into(),
            pid: i32::MAX,
            secret: i32::MIN,
        };
        let second = CancelTarget {
            address: "10.0.0.2:5432".into(),
            pid: 1,
            secret: -1,
        };
        for target in [&first, &second, &first] {
            registration.set_target(Some(target));
            assert_eq!(
                registry.lookup(registration.pid, &secret).as_ref(),
                Some(target)
            );
            registration.set_target(None);
            assert_eq!(
                registry.lookup(registration.pid, &secret),
                None,
                "between servers"
            );
        }
    }

    #[test]
    fn cancels_go_to_our_server_or_to_the_peer_that_minted_the_key() {
        let registry = Arc::new(CancelRegistry::default());
        let peers = peers();
        let peering = Peering {
            own_id: 1,
            peers: &peers,
        };
        let ours = registry.register(1);
        let target = CancelTarget {
            address: "127.0.0.1:5432".into(),
            pid: 4242,
            secret: 9,
        };
        ours.set_target(Some(&target));
        let secret = ours.secret.to_be_bytes();
        let local = CancelRoute::Local(target.clone());
        assert_eq!(registry.route(ours.pid, &secret, &peering), local);
        // A peer passing our key back to us (relayed bit set) reaches the same server.
        let relayed = KeyPid::decode(ours.pid).relayed_wire();
        assert_eq!(registry.route(relayed, &secret, &peering), local);

        let theirs = mint_pid(2, 77);
        assert_eq!(
            registry.route(theirs, &7i32.to_be_bytes(), &peering),
            CancelRoute::Peer(CancelTarget {
                address: "10.0.0.12:5000".into(),
                pid: KeyPid::decode(theirs).relayed_wire(),
                secret: 7,
            })
        );
    }

    #[test]
    fn keys_that_are_nobody_elses_are_ignored() {
        let registry = Arc::new(CancelRegistry::default());
        let peers = peers();
        let peering = Peering {
            own_id: 1,
            peers: &peers,
        };
        let secret = 7i32.to_be_bytes();
        let cases = [
            (mint_pid(1, 77), &secret[..], "own id, unknown session"),
            (mint_pid(0, 77), &secret[..], "minted without peering"),
            (mint_pid(3, 77), &secret[..], "peer id not configured"),
            (
                KeyPid::decode(mint_pid(2, 77)).relayed_wire(),
                &secret[..],
                "already relayed once: never a second hop",
            ),
            (mint_pid(2, 77), &[0u8; 8][..], "secret of another length"),
        ];
        for (pid, secret, why) in cases {
            assert!(
                matches!(
                    registry.route(pid, secret, &peering),
                    CancelRoute::Ignore(_)
                ),
                "{why}"
            );
        }
        // Our own idle client: known key, no server yet.
        let idle = registry.register(1);
        let route = registry.route(idle.pid, &idle.secret.to_be_bytes(), &peering);
        assert!(matches!(route, CancelRoute::Ignore(_)), "{route:?}");
    }
}
