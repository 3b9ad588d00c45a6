//! Query cancellation. Each client gets a BackendKeyData from here; the registry
//! maps it to the server connection the client is using at that moment, and a
//! CancelRequest arriving on a new connection is forwarded to that server with the
//! server's own key; while the client's request still waits for a server, the
//! cancel goes to the waiting session instead (`session::waiting`), and a session
//! does not give its server to anyone else while a cancel for it is on the way
//! ([`Registration::settle`]). Behind a VIP a client's CancelRequest (a new connection) can
//! reach the other instance of a pair, so each key also names the instance that
//! issued it, and a key issued by a configured peer is passed on to that peer.
//!
//! # Key encoding
//! The process id is the server backend's real pid in session mode (one server
//! backs the client for its whole session, so `pg_backend_pid()`, notifications,
//! `pg_stat_activity` and `pg_terminate_backend()` agree with what the driver
//! reports), and minted in transaction mode, where no single server backs the client:
//!
//! ```text
//! process id   bit 31     bits 30..0
//!             [relayed]  [session mode: the backend's pid (below 2^22 on Linux)]
//!                        [transaction mode: random, at least 2^24, so it never
//!                         names a live process and pg_terminate_backend() of it
//!                         does nothing]
//! secret       bits 31..25                       bits 24..0
//!             [peer id, 1..=127, with peering]  [random]
//!             (without peering, all 32 bits are random)
//! ```
//!
//! - A real pid is only unique per node, so a key is the pair (process id, secret):
//!   the registry draws secrets so that no two live keys share both.
//! - The peer id is the issuing instance's `peer_id`; with it the secret keeps 25
//!   random bits (an instance without peering keeps all 32).
//! - Clients only ever see `relayed = 0`, so their process ids are positive, as
//!   PostgreSQL's are. An instance that passes a cancel on to a peer sets the bit,
//!   and a relayed cancel is never passed on again: one hop at most, so even
//!   peers configured inconsistently cannot bounce a cancel between them.
//! - The secret is checked in constant time by the owner, so passing a key on
//!   reveals nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::config::PeerConfig;
use crate::protocol::messages;

use crate::config::MAX_PEER_ID;

const RELAYED_BIT: u32 = 1 << 31;
/// Smallest minted process id: above any pid Linux hands out (`PID_MAX_LIMIT` is 2^22).
const MIN_MINTED_PID: i32 = 1 << 24;
/// Where the peer id sits in the secret.
const PEER_SHIFT: u32 = 25;
const SECRET_RANDOM_MASK: u32 = (1 << PEER_SHIFT) - 1;

/// A process id as it arrives in a CancelRequest, split into its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPid {
    /// The process id as issued (relayed bit clear).
    pub pid: i32,
    /// Another instance passed this request on; it must not travel further.
    pub relayed: bool,
}

impl KeyPid {
    pub fn decode(wire: i32) -> KeyPid {
        let bits = wire as u32;
        KeyPid {
            pid: (bits & !RELAYED_BIT) as i32,
            relayed: bits & RELAYED_BIT != 0,
        }
    }

    /// The process id to send when passing this request on to a peer.
    pub fn relayed_wire(&self) -> i32 {
        (self.pid as u32 | RELAYED_BIT) as i32
    }
}

/// The `peer_id` a secret names (0: an instance without peering, or no Switchyard
/// key at all).
pub fn secret_peer(secret: [u8; 4]) -> u32 {
    u32::from_be_bytes(secret) >> PEER_SHIFT
}

/// A fresh secret carrying `peer` (see the module doc); `random` supplies the bits.
fn mint_secret(peer: u32, random: u32) -> i32 {
    if peer == 0 {
        random as i32
    } else {
        ((peer << PEER_SHIFT) | (random & SECRET_RANDOM_MASK)) as i32
    }
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
    Local(LocalCancel),
    /// One of our clients whose request waits for a server: nothing runs yet, so
    /// the session itself answers the cancel.
    Waiting(WaitingRequest),
    /// Issued by configured peer `peer`: send it this request (relayed bit set).
    Peer { peer: u32, target: CancelTarget },
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

/// A cancel on its way to the server one of our clients uses. Until it is
/// dropped (the server has taken the request, or sending it failed) the client's
/// session does not hand that server to another client ([`Registration::settle`]):
/// a cancel racing the end of a transaction must not land on the next client's
/// query, which directly could never happen.
pub struct LocalCancel {
    pub target: CancelTarget,
    _in_flight: InFlight,
}

impl PartialEq for LocalCancel {
    fn eq(&self, other: &LocalCancel) -> bool {
        self.target == other.target
    }
}

impl Eq for LocalCancel {}

impl std::fmt::Debug for LocalCancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.target.fmt(f)
    }
}

/// Counts one cancel in flight on a slot; wakes [`Registration::settle`] when the
/// last one ends.
struct InFlight(TargetSlot);

impl InFlight {
    fn start(slot: &TargetSlot) -> InFlight {
        slot.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(slot))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.settled.notify_waiters();
        }
    }
}

/// The server a client uses now; shared by the registry and the client's session.
///
/// Transaction mode points it at a server and back at none twice per transaction,
/// so that is two stores of the backend key. The address is written only
/// when the client moves to a server at another address. A cancel racing with a
/// move may pair a key with the other server's address; PostgreSQL ignores a key it
/// did not issue, so the worst case is the cancel a race allows anyway.
///
/// A cancel counts itself in `in_flight` before it reads the key, and a session
/// clears the key before it reads `in_flight` (both sequentially consistent): so
/// either the cancel sees no server, or the session sees the cancel and waits for
/// it before the server can go to anyone else.
#[derive(Default)]
struct SlotState {
    /// The server backend's key, pid in the high half and secret in the low; 0 when
    /// the client uses no server (PostgreSQL's pids are positive).
    backend_key: AtomicU64,
    /// `host:port` of the server the key was last set from.
    address: Mutex<String>,
    /// Cancels read from this slot and not yet delivered.
    in_flight: AtomicU32,
    /// Notified when `in_flight` drops to 0.
    settled: Notify,
    /// The client's request waits for a server (PAUSE, failover hold, pool queue):
    /// a cancel then has no server to go to and is delivered to the session.
    waiting: AtomicBool,
    /// Wakes the waiting session; `notify_waiters` stores no permit, so a cancel
    /// can never reach a later request.
    cancel_waiting: Notify,
}

type TargetSlot = Arc<SlotState>;

fn pack_key(pid: i32, secret: i32) -> u64 {
    (u64::from(pid as u32) << 32) | u64::from(secret as u32)
}

struct Entry {
    secret: i32,
    target: TargetSlot,
}

/// What one of our own keys points at now.
enum Local {
    Server(LocalCancel),
    Waiting(WaitingRequest),
}

/// A client whose request waits for a server, found by its cancel key.
pub struct WaitingRequest(TargetSlot);

impl WaitingRequest {
    /// Tells the waiting session its request is cancelled.
    pub fn cancel(self) {
        self.0.cancel_waiting.notify_waiters();
    }
}

/// The same client's slot.
impl PartialEq for WaitingRequest {
    fn eq(&self, other: &WaitingRequest) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for WaitingRequest {}

impl std::fmt::Debug for WaitingRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WaitingRequest")
    }
}

/// Live keys by process id. A process id usually has one entry; a real pid can
/// have more (the same pid on two nodes, or a pid reused), told apart by secret.
#[derive(Default)]
pub struct CancelRegistry {
    entries: Mutex<HashMap<i32, Vec<Entry>>>,
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
    fn entries(&self) -> MutexGuard<'_, HashMap<i32, Vec<Entry>>> {
        // A panic while holding this lock cannot leave the map inconsistent (every
        // critical section is a single insert/get/remove), so a poisoned lock is used as is.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a key for a client, carrying this instance's `peer_id` (see the
    /// module doc for the layout). `backend_pid`: the pid of the one server backing
    /// the client (session mode), used as the key's process id; None mints one.
    pub fn register(self: &Arc<Self>, peer_id: u32, backend_pid: Option<i32>) -> Registration {
        // Validation keeps peer_id within 7 bits; were it not, 0 (no peering) is
        // the value that cannot make a key look like another instance's.
        let peer_id = if peer_id <= MAX_PEER_ID { peer_id } else { 0 };
        // A pid with the relayed bit set cannot be told from a relayed request;
        // PostgreSQL's pids are positive, so this only guards against nonsense.
        let backend_pid = backend_pid.filter(|&pid| pid > 0);
        let mut rng = rand::thread_rng();
        let mut entries = self.entries();
        loop {
            let pid = backend_pid.unwrap_or_else(|| rng.gen_range(MIN_MINTED_PID..=i32::MAX));
            let secret = mint_secret(peer_id, rng.gen());
            let same_pid = entries.entry(pid).or_default();
            if same_pid.iter().any(|e| e.secret == secret) {
                continue;
            }
            let target = TargetSlot::default();
            same_pid.push(Entry {
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

    /// The target for a cancel key, if the key is known, the secret matches and the
    /// client uses a server now; the server stays the client's while the returned
    /// [`LocalCancel`] lives.
    pub fn lookup(&self, pid: i32, secret: &[u8]) -> Option<LocalCancel> {
        match self.find(pid, secret)? {
            Local::Server(target) => Some(target),
            Local::Waiting(_) => None,
        }
    }

    fn find(&self, pid: i32, secret: &[u8]) -> Option<Local> {
        let entries = self.entries();
        let entry = entries.get(&pid)?.iter().find(|entry| {
            let matches: bool = entry.secret.to_be_bytes().ct_eq(secret).into();
            matches
        })?;
        let in_flight = InFlight::start(&entry.target);
        let key = entry.target.backend_key.load(Ordering::SeqCst);
        if key == 0 {
            return entry
                .target
                .waiting
                .load(Ordering::Acquire)
                .then(|| Local::Waiting(WaitingRequest(Arc::clone(&entry.target))));
        }
        let address = lock_address(&entry.target).clone();
        Some(Local::Server(LocalCancel {
            target: CancelTarget {
                address,
                pid: (key >> 32) as u32 as i32,
                secret: key as u32 as i32,
            },
            _in_flight: in_flight,
        }))
    }

    /// Decides what a CancelRequest calls for: our own key, a key to pass on to
    /// the configured peer that issued it, or nothing (with the reason, for the log).
    /// Our own keys are looked up first, whatever their peer bits, so keys issued
    /// before a reload changed `peer_id` still work.
    pub fn route(&self, wire_pid: i32, secret: &[u8], peering: &Peering<'_>) -> CancelRoute {
        let key = KeyPid::decode(wire_pid);
        match self.find(key.pid, secret) {
            Some(Local::Server(target)) => return CancelRoute::Local(target),
            Some(Local::Waiting(request)) => return CancelRoute::Waiting(request),
            None => {}
        }
        if key.relayed {
            return CancelRoute::Ignore("relayed by a peer, but no such active session here");
        }
        let Ok(secret) = <[u8; 4]>::try_from(secret) else {
            return CancelRoute::Ignore("not a Switchyard key (secret is not 4 bytes)");
        };
        let peer = secret_peer(secret);
        if peer == 0 || peer == peering.own_id {
            return CancelRoute::Ignore("no such active session");
        }
        match peering.peers.iter().find(|p| p.id == peer) {
            Some(config) => CancelRoute::Peer {
                peer,
                target: CancelTarget {
                    address: config.address.clone(),
                    pid: key.relayed_wire(),
                    secret: i32::from_be_bytes(secret),
                },
            },
            None => CancelRoute::Ignore("issued by a peer id that is not configured"),
        }
    }

    pub fn len(&self) -> usize {
        self.entries().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Registration {
    /// A future that resolves when a CancelRequest for this client arrives while
    /// its request waits; call `enable` on it (pinned) before [`Self::waiting`] so
    /// no cancel slips between the two.
    pub fn cancel_while_waiting(&self) -> Notified<'_> {
        self.target.cancel_waiting.notified()
    }

    /// Marks the client's request as waiting for a server until the guard drops.
    /// Point the key at the server ([`Self::set_target`]) before dropping it, so a
    /// cancel always finds one or the other.
    pub fn waiting(&self) -> WaitingGuard<'_> {
        self.target.waiting.store(true, Ordering::Release);
        WaitingGuard(&self.target)
    }

    /// After `set_target(None)`: waits until the cancels already on their way to
    /// the server this client used have been delivered (each is bounded by
    /// `server.cancel_timeout`), so that none lands on the next user of the server.
    /// Returns at once when there are none, the usual case.
    pub async fn settle(&self) {
        let slot = &self.target;
        while slot.in_flight.load(Ordering::SeqCst) > 0 {
            let settled = slot.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if slot.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            settled.await;
        }
    }

    /// Points this client's key at the server it now uses (None: no server; call
    /// [`Registration::settle`] before the server goes to anyone else).
    pub fn set_target(&self, target: Option<&CancelTarget>) {
        let Some(target) = target else {
            self.target.backend_key.store(0, Ordering::SeqCst);
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

/// Clears the waiting mark of a client's key when dropped.
pub struct WaitingGuard<'a>(&'a SlotState);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting.store(false, Ordering::Release);
    }
}

fn lock_address(slot: &SlotState) -> MutexGuard<'_, String> {
    // Only ever holds an assignment or a clone: consistent even if poisoned.
    slot.address.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut entries = self.registry.entries();
        if let Some(same_pid) = entries.get_mut(&self.pid) {
            same_pid.retain(|entry| entry.secret != self.secret);
            if same_pid.is_empty() {
                entries.remove(&self.pid);
            }
        }
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

    fn target(address: &str, pid: i32, secret: i32) -> CancelTarget {
        CancelTarget {
            address: address.into(),
            pid,
            secret,
        }
    }

    #[test]
    fn keys_map_to_targets_and_vanish_on_drop() {
        let registry = Arc::new(CancelRegistry::default());
        let registration = registry.register(0, None);
        let secret = registration.secret.to_be_bytes();
        assert_eq!(
            registry.lookup(registration.pid, &secret),
            None,
            "no server yet"
        );
        let target = target("127.0.0.1:5432", 99, 7);
        registration.set_target(Some(&target));
        assert_eq!(
            registry
                .lookup(registration.pid, &secret)
                .map(|l| l.target)
                .as_ref(),
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
    fn minted_pids_name_no_process_and_secrets_carry_the_peer_id() {
        let registry = Arc::new(CancelRegistry::default());
        let mut live = Vec::new();
        for peer in [1, 2, MAX_PEER_ID] {
            for _ in 0..200 {
                let r = registry.register(peer, None);
                assert!(r.pid >= MIN_MINTED_PID, "{:#x}", r.pid);
                assert_eq!(
                    KeyPid::decode(r.pid),
                    KeyPid {
                        pid: r.pid,
                        relayed: false
                    }
                );
                assert_eq!(secret_peer(r.secret.to_be_bytes()), peer);
                live.push(r);
            }
        }
        assert_eq!(registry.len(), 600, "every key is unique");
        // Without peering the secret is all random: some have high bits set.
        let random: Vec<_> = (0..64).map(|_| registry.register(0, None)).collect();
        assert!(random
            .iter()
            .any(|r| secret_peer(r.secret.to_be_bytes()) != 0));
        // An out-of-range id (validation prevents it) is treated as no peering.
        assert!(registry.register(300, None).pid > 0);
    }

    #[test]
    fn session_keys_use_the_backend_pid_and_tell_nodes_apart_by_secret() {
        let registry = Arc::new(CancelRegistry::default());
        // Two clients whose backends have the same pid on two nodes.
        let on_primary = registry.register(1, Some(4242));
        let on_replica = registry.register(1, Some(4242));
        assert_eq!((on_primary.pid, on_replica.pid), (4242, 4242));
        assert_ne!(on_primary.secret, on_replica.secret);
        assert_eq!(secret_peer(on_primary.secret.to_be_bytes()), 1);
        let primary = target("10.0.0.1:5432", 4242, 1);
        let replica = target("10.0.0.2:5432", 4242, 2);
        on_primary.set_target(Some(&primary));
        on_replica.set_target(Some(&replica));
        let lookup = |r: &Registration| {
            registry
                .lookup(r.pid, &r.secret.to_be_bytes())
                .map(|l| l.target)
        };
        assert_eq!(lookup(&on_primary), Some(primary));
        assert_eq!(lookup(&on_replica), Some(replica.clone()));
        drop(on_primary);
        assert_eq!(lookup(&on_replica), Some(replica), "the other key stays");
        assert_eq!(registry.len(), 1);
        // A pid that is no pid is not used.
        assert!(registry.register(0, Some(-5)).pid >= MIN_MINTED_PID);
    }

    #[test]
    fn relaying_sets_only_the_top_bit() {
        let pid = 0x05ab_cdef;
        let key = KeyPid::decode(pid);
        let wire = key.relayed_wire();
        assert!(wire < 0);
        assert_eq!(wire as u32, 0x85ab_cdef);
        assert_eq!(KeyPid::decode(wire), KeyPid { pid, relayed: true });
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
        let registration = registry.register(0, None);
        let secret = registration.secret.to_be_bytes();
        let first = target("10.0.0.1:5432", i32::MAX, i32::MIN);
        let second = target("10.0.0.2:5432", 1, -1);
        for target in [&first, &second, &first] {
            registration.set_target(Some(target));
            assert_eq!(
                registry
                    .lookup(registration.pid, &secret)
                    .map(|l| l.target)
                    .as_ref(),
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
    fn cancels_go_to_our_server_or_to_the_peer_that_issued_the_key() {
        let registry = Arc::new(CancelRegistry::default());
        let peers = peers();
        let peering = Peering {
            own_id: 1,
            peers: &peers,
        };
        for backend_pid in [None, Some(4242)] {
            let ours = registry.register(1, backend_pid);
            let target = target("127.0.0.1:5432", 4242, 9);
            ours.set_target(Some(&target));
            let secret = ours.secret.to_be_bytes();
            let local = |route| match route {
                CancelRoute::Local(local) => Some(local.target),
                _ => None,
            };
            assert_eq!(
                local(registry.route(ours.pid, &secret, &peering)),
                Some(target.clone())
            );
            // A peer passing our key back to us (relayed bit set) reaches the same server.
            let relayed = KeyPid::decode(ours.pid).relayed_wire();
            assert_eq!(
                local(registry.route(relayed, &secret, &peering)),
                Some(target.clone())
            );
        }

        let theirs = mint_secret(2, 77);
        assert_eq!(
            registry.route(4242, &theirs.to_be_bytes(), &peering),
            CancelRoute::Peer {
                peer: 2,
                target: CancelTarget {
                    address: "10.0.0.12:5000".into(),
                    pid: KeyPid::decode(4242).relayed_wire(),
                    secret: theirs,
                }
            }
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
        let secret = |peer| mint_secret(peer, 77).to_be_bytes();
        let relayed = KeyPid::decode(4242).relayed_wire();
        let cases = [
            (4242, secret(1).to_vec(), "own id, unknown session"),
            (4242, secret(0).to_vec(), "issued without peering"),
            (4242, secret(3).to_vec(), "peer id not configured"),
            (
                relayed,
                secret(2).to_vec(),
                "already relayed once: never a second hop",
            ),
            (4242, [0u8; 8].to_vec(), "secret of another length"),
        ];
        for (pid, secret, why) in cases {
            assert!(
                matches!(
                    registry.route(pid, &secret, &peering),
                    CancelRoute::Ignore(_)
                ),
                "{why}"
            );
        }
        // Our own idle client: known key, no server yet.
        let idle = registry.register(1, None);
        let route = registry.route(idle.pid, &idle.secret.to_be_bytes(), &peering);
        assert!(matches!(route, CancelRoute::Ignore(_)), "{route:?}");
    }

    #[tokio::test]
    async fn a_session_waits_for_cancels_in_flight_before_giving_up_its_server() {
        let registry = Arc::new(CancelRegistry::default());
        let registration = registry.register(0, None);
        let secret = registration.secret.to_be_bytes();
        registration.set_target(Some(&target("10.0.0.1:5432", 7, 8)));
        let cancel = registry.lookup(registration.pid, &secret).expect("in use");
        registration.set_target(None);
        // The cancel read the server before the session let it go: the session
        // waits for it.
        let mut settle = Box::pin(registration.settle());
        assert!(futures_util::poll!(settle.as_mut()).is_pending());
        drop(cancel);
        settle.await;
        // A cancel that finds no server holds nothing up.
        assert!(registry.lookup(registration.pid, &secret).is_none());
        registration.settle().await;
    }

    #[tokio::test]
    async fn a_cancel_for_a_client_without_a_server_wakes_its_wait_only() {
        let registry = Arc::new(CancelRegistry::default());
        let registration = registry.register(0, None);
        let secret = registration.secret.to_be_bytes();
        let peering = Peering {
            own_id: 0,
            peers: &[],
        };
        // Not waiting: nothing to cancel, and nothing kept for a later wait.
        let mut later = Box::pin(registration.cancel_while_waiting());
        later.as_mut().enable();
        let route = registry.route(registration.pid, &secret, &peering);
        assert!(matches!(route, CancelRoute::Ignore(_)), "{route:?}");
        assert!(futures_util::poll!(later.as_mut()).is_pending());
        // Waiting: the cancel is delivered to the session, once.
        let mut waiting = Box::pin(registration.cancel_while_waiting());
        waiting.as_mut().enable();
        let mark = registration.waiting();
        // A wrong secret wakes nobody.
        let wrong = (registration.secret ^ 1).to_be_bytes();
        let route = registry.route(registration.pid, &wrong, &peering);
        assert!(matches!(route, CancelRoute::Ignore(_)), "{route:?}");
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        match registry.route(registration.pid, &secret, &peering) {
            CancelRoute::Waiting(request) => request.cancel(),
            other => panic!("expected the waiting request, got {other:?}"),
        }
        waiting.await;
        drop(mark);
        // Once the wait is over, a cancel finds nothing again.
        let route = registry.route(registration.pid, &secret, &peering);
        assert!(matches!(route, CancelRoute::Ignore(_)), "{route:?}");
    }
}
