//! Configuration reload (SIGHUP or `POST /reload`): re-read the file, and only if it
//! is valid and every new listener can be bound, apply it whole. Users, pool
//! settings and the cluster's nodes and health settings change in place; listeners
//! are added, changed or closed. Sessions already running keep the settings they
//! started with and are never dropped; a closed listener's clients stay until they
//! leave. An invalid file changes nothing and says why.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::kdf;
use crate::config::{Config, ListenerConfig};
use crate::context::{ListenerCounters, ListenerState, ProxyContext, ReloadOutcome, ReloadRequest};
use crate::listener;
use crate::pool::PoolSettings;
use crate::tls::ClientTls;
use crate::topology::{monitor, reconfigure};
use crate::users::UserDb;

/// One open listener: the socket lives in its accept loop task.
struct ListenerSlot {
    config: ListenerConfig,
    state: Arc<ArcSwap<ListenerState>>,
    stop: CancellationToken,
}

/// Owns what a reload changes besides the context: the listener slots and the
/// topology monitor. Requests are served one at a time.
pub struct Reloader {
    ctx: Arc<ProxyContext>,
    tasks: TaskTracker,
    source: Option<PathBuf>,
    slots: Vec<ListenerSlot>,
    monitor: CancellationToken,
}

/// Serves reload requests until the proxy stops.
pub async fn serve(mut reloader: Reloader, mut requests: mpsc::Receiver<ReloadRequest>) {
    loop {
        let reply = tokio::select! {
            request = requests.recv() => match request {
                Some(reply) => reply,
                None => return,
            },
            _ = reloader.ctx.shutdown().cancelled() => return,
        };
        let outcome = reloader.reload().await;
        match &outcome {
            Ok(summary) => tracing::info!("configuration reloaded: {summary}"),
            Err(reason) => {
                tracing::error!("configuration NOT reloaded, the running one stays: {reason}")
            }
        }
        reloader.ctx.reload_status().record(&outcome);
        let _ = reply.send(outcome);
    }
}

impl Reloader {
    pub fn new(
        ctx: Arc<ProxyContext>,
        tasks: TaskTracker,
        source: Option<PathBuf>,
        monitor: CancellationToken,
    ) -> Reloader {
        Reloader {
            ctx,
            tasks,
            source,
            slots: Vec::new(),
            monitor,
        }
    }

    /// Starts accepting on a bound socket. `counters` carries a listener's figures
    /// over when it is re-created under the same name.
    pub fn open_listener(
        &mut self,
        socket: TcpListener,
        config: ListenerConfig,
        counters: Option<Arc<ListenerCounters>>,
        tls: Option<Arc<ClientTls>>,
    ) {
        let local_addr = socket.local_addr().unwrap_or(config.listen);
        if let Some(tls) = &tls {
            crate::tls::record_expiry(&config.name, tls);
        }
        let state = Arc::new(ArcSwap::from_pointee(ListenerState {
            counters: counters.unwrap_or_else(|| Arc::new(ListenerCounters::new(&config.name))),
            config: config.clone(),
            local_addr,
            tls,
        }));
        tracing::info!(listener = %config.name, address = %local_addr, route = ?config.route, "listening");

        let stop = self.ctx.shutdown().child_token();
        spawn_accept_loop(
            socket,
            Arc::clone(&state),
            stop.clone(),
            Arc::clone(&self.ctx),
            &self.tasks,
        );
        self.slots.push(ListenerSlot {
            config,
            state,
            stop,
        });
        self.publish_listeners();
    }

    fn publish_listeners(&self) {
        let states = self.slots.iter().map(|s| s.state.load_full()).collect();
        self.ctx.set_listeners(states);
    }

    async fn reload(&mut self) -> ReloadOutcome {
        let Some(path) = self.source.clone() else {
            return Err("this instance was started without a config file".into());
        };
        let config = Config::load(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // Certificates and keys are read again on every reload, changed or not: a
        // renewed certificate is picked up by SIGHUP alone. A bad one refuses the
        // whole reload and the running ones stay.
        let tls = crate::tls::load_for_listeners(&config)
            .map_err(|e| format!("{}: TLS: {e}", path.display()))?;
        if self.ctx.draining().is_cancelled() {
            return Err("the proxy is shutting down".into());
        }
        // Every new socket first: a listener that cannot be bound fails the whole
        // reload before anything changed.
        let mut bound = HashMap::new();
        for listener in &config.listeners {
            let kept = self
                .slots
                .iter()
                .any(|s| s.config.name == listener.name && s.config.listen == listener.listen);
            if !kept {
                let socket = listener::bind_listener(listener)
                    .await
                    .map_err(|e| e.to_string())?;
                bound.insert(listener.name.clone(), socket);
            }
        }
        let old = self.ctx.config();
        let mut changes = describe_changes(&old, &config);
        if !tls.is_empty() {
            let mut names: Vec<&str> = tls.keys().map(String::as_str).collect();
            names.sort_unstable();
            changes.push(format!(
                "TLS certificates loaded for listeners: {}",
                names.join(", ")
            ));
        }
        let config = Arc::new(config);
        let users = {
            let (config, previous) = (Arc::clone(&config), self.ctx.users());
            kdf::run(move || UserDb::from_config(&config, Some(&previous)))
                .await
                .map_err(|e| e.to_string())?
        };
        self.ctx.set_config(Arc::clone(&config), users);
        self.ctx
            .pools()
            .reconfigure(PoolSettings::from_config(&config), &|user| {
                self.ctx.server_secret(user)
            });
        if cluster_changed(&old, &config) {
            self.restart_monitor(&config);
        }
        self.apply_listeners(&config, bound, tls);
        if old.admin.listen != config.admin.listen {
            changes.push(format!(
                "admin.listen stays {} until a restart",
                old.admin.listen
            ));
            tracing::warn!(
                "admin.listen changed to {}; it takes effect at the next restart",
                config.admin.listen
            );
        }
        if old.runtime.workers != config.runtime.workers {
            changes.push(format!(
                "runtime.workers stays {} until a restart",
                self.ctx.workers().count()
            ));
            tracing::warn!(
                "runtime.workers changed to {}; it takes effect at the next restart",
                config.runtime.workers
            );
        }
        if changes.is_empty() {
            changes.push("no changes".into());
        }
        Ok(changes.join("; "))
    }

    fn restart_monitor(&mut self, config: &Config) {
        self.monitor.cancel();
        let fresh = if config.cluster.members_from_patroni() {
            // Members come from /cluster; keep the known ones until it answers.
            self.ctx.topology().load().nodes.clone()
        } else {
            monitor::initial_nodes(&config.cluster)
        };
        let topology = self.ctx.topology();
        topology.replace(reconfigure::carry_over(
            &topology.load(),
            fresh,
            SystemTime::now(),
        ));
        self.monitor = self.ctx.shutdown().child_token();
        self.tasks.spawn(monitor::run(
            config.cluster.clone(),
            config.server.tls_loaded.clone(),
            Arc::clone(topology),
            self.monitor.clone(),
        ));
    }

    fn apply_listeners(
        &mut self,
        config: &Config,
        mut bound: HashMap<String, TcpListener>,
        mut tls: HashMap<String, Arc<ClientTls>>,
    ) {
        let old_slots = std::mem::take(&mut self.slots);
        let mut counters_by_name = HashMap::new();
        for slot in old_slots {
            let keep = config
                .listeners
                .iter()
                .find(|l| l.name == slot.config.name && l.listen == slot.config.listen);
            match keep {
                Some(listener) => {
                    // Same socket; new sessions get the new settings.
                    let current = slot.state.load_full();
                    let listener_tls = tls.remove(&listener.name);
                    if let Some(tls) = &listener_tls {
                        crate::tls::record_expiry(&listener.name, tls);
                    }
                    slot.state.store(Arc::new(ListenerState {
                        config: listener.clone(),
                        local_addr: current.local_addr,
                        counters: Arc::clone(&current.counters),
                        tls: listener_tls,
                    }));
                    self.slots.push(ListenerSlot {
                        config: listener.clone(),
                        state: slot.state,
                        stop: slot.stop,
                    });
                }
                None => {
                    tracing::info!(listener = %slot.config.name, "listener removed by reload; its clients stay until they leave");
                    counters_by_name.insert(
                        slot.config.name.clone(),
                        Arc::clone(&slot.state.load().counters),
                    );
                    slot.stop.cancel();
                }
            }
        }
        for listener in &config.listeners {
            if let Some(socket) = bound.remove(&listener.name) {
                let counters = counters_by_name.remove(&listener.name);
                let listener_tls = tls.remove(&listener.name);
                self.open_listener(socket, listener.clone(), counters, listener_tls);
            }
        }
        // Keep the configured order for /status.
        self.slots.sort_by_key(|s| {
            config
                .listeners
                .iter()
                .position(|l| l.name == s.config.name)
                .unwrap_or(usize::MAX)
        });
        self.publish_listeners();
    }
}

fn cluster_changed(old: &Config, new: &Config) -> bool {
    // Secrets serialize redacted, so the probe password is compared on its own.
    let probe_password = |c: &Config| c.cluster.probe.as_ref().map(|p| p.password.clone());
    serde_json::to_value(&old.cluster).ok() != serde_json::to_value(&new.cluster).ok()
        || probe_password(old) != probe_password(new)
        || tls_changed(old, new)
}

/// TLS settings or the files behind them (a certificate renewed in place) changed:
/// new server connections, SQL probes and Patroni polls use the new ones.
fn tls_changed(old: &Config, new: &Config) -> bool {
    let api = |c: &Config| c.cluster.api_tls_loaded.as_ref().map(|t| t.fingerprint);
    old.server.tls_loaded.fingerprint() != new.server.tls_loaded.fingerprint()
        || api(old) != api(new)
}

/// One phrase per kind of change, for the reload log line.
fn describe_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut changes = Vec::new();
    let names = |c: &Config| -> Vec<String> { c.users.iter().map(|u| u.name.clone()).collect() };
    let (old_users, new_users) = (names(old), names(new));
    let added: Vec<&String> = new_users
        .iter()
        .filter(|u| !old_users.contains(u))
        .collect();
    let removed: Vec<&String> = old_users
        .iter()
        .filter(|u| !new_users.contains(u))
        .collect();
    let changed: Vec<&str> = new
        .users
        .iter()
        .filter(|u| {
            old.user(&u.name)
                .is_some_and(|o| o.password != u.password || o.auth != u.auth)
        })
        .map(|u| u.name.as_str())
        .collect();
    if !added.is_empty() {
        changes.push(format!("users added: {}", join(&added)));
    }
    if !removed.is_empty() {
        changes.push(format!("users removed: {}", join(&removed)));
    }
    if !changed.is_empty() {
        changes.push(format!("users changed: {}", changed.join(", ")));
    }
    if old.auth != new.auth {
        changes.push("auth changed: the auth_query cache starts empty".into());
    }
    if serde_json::to_value(&old.pool).ok() != serde_json::to_value(&new.pool).ok() {
        changes.push(format!(
            "pool settings changed (size {} -> {})",
            old.pool.size, new.pool.size
        ));
    }
    let node_names = |c: &Config| -> Vec<String> {
        c.cluster
            .nodes
            .iter()
            .map(|n| match (&n.api, n.is_seed()) {
                (Some(api), true) => api.clone(),
                _ => n.name.clone(),
            })
            .collect()
    };
    let (old_nodes, new_nodes) = (node_names(old), node_names(new));
    let added: Vec<&String> = new_nodes
        .iter()
        .filter(|n| !old_nodes.contains(n))
        .collect();
    let removed: Vec<&String> = old_nodes
        .iter()
        .filter(|n| !new_nodes.contains(n))
        .collect();
    if !added.is_empty() {
        changes.push(format!("nodes added: {}", join(&added)));
    }
    if !removed.is_empty() {
        changes.push(format!("nodes removed: {}", join(&removed)));
    }
    if tls_changed(old, new) {
        changes.push("TLS settings or files changed (new connections use them)".into());
    }
    if cluster_changed(old, new) && added.is_empty() && removed.is_empty() {
        changes.push("cluster settings changed".into());
    }
    let listener_key = |l: &ListenerConfig| serde_json::to_value(l).ok();
    let old_listeners: Vec<_> = old.listeners.iter().map(listener_key).collect();
    let new_listeners: Vec<_> = new.listeners.iter().map(listener_key).collect();
    if old_listeners != new_listeners {
        let names: Vec<String> = new.listeners.iter().map(|l| l.name.clone()).collect();
        changes.push(format!("listeners now: {}", names.join(", ")));
    }
    if old.peer_id != new.peer_id || old.peers != new.peers {
        changes.push(format!(
            "peering now: peer_id {}, {} peer(s)",
            new.peer_id,
            new.peers.len()
        ));
    }
    for (section, a, b) in [
        (
            "client",
            serde_json::to_value(&old.client).ok(),
            serde_json::to_value(&new.client).ok(),
        ),
        (
            "server",
            serde_json::to_value(&old.server).ok(),
            serde_json::to_value(&new.server).ok(),
        ),
        (
            "failover",
            serde_json::to_value(&old.failover).ok(),
            serde_json::to_value(&new.failover).ok(),
        ),
        (
            "tls",
            serde_json::to_value(&old.tls).ok(),
            serde_json::to_value(&new.tls).ok(),
        ),
    ] {
        if a != b {
            changes.push(format!("{section} settings changed"));
        }
    }
    changes
}

fn join(names: &[&String]) -> String {
    names
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Spawns the accept loop of a bound listener; it stops on `stop` or when draining.
fn spawn_accept_loop(
    socket: TcpListener,
    state: Arc<ArcSwap<ListenerState>>,
    stop: CancellationToken,
    ctx: Arc<ProxyContext>,
    tasks: &TaskTracker,
) {
    tasks.spawn(listener::accept_loop(
        socket,
        state,
        stop,
        ctx,
        tasks.clone(),
    ));
}
