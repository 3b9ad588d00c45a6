//! A Keepalived pair for real, where the machine allows it (root, `ip netns`,
//! keepalived installed; otherwise the test says why and passes): two network
//! namespaces `sy-a` and `sy-b`, each running the `switchyard` binary and
//! Keepalived with the shipped MASTER/BACKUP configs (addresses and binary path
//! filled in), joined by a bridge in this namespace where PostgreSQL listens.
//! Roles come from the SQL probe, so nothing but PostgreSQL has to be reachable
//! from the namespaces. Checked: the VIP lands on A and clients through it reach A;
//! a cancel sent to B's own address cancels a query running on A (peers); when A's
//! Switchyard stops, the VIP moves to B and clients reconnecting through it reach B.
//!
//! Topology (all names fixed, so a run first removes what a killed run left):
//!
//! ```text
//!   this namespace: PostgreSQL on 10.77.0.1 (bridge sy-br0), the test's clients
//!        |-- veth sy-a-br <-> eth0 in netns sy-a: 10.77.0.11 (+ VIP 10.77.0.100 as MASTER)
//!        `-- veth sy-b-br <-> eth0 in netns sy-b: 10.77.0.12
//! ```

mod harness;

use std::net::SocketAddr;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::clients::*;
use harness::pg::PgCluster;
use harness::proc::{self, SpawnOpts, Supervised};
use tokio::net::TcpStream;
use tokio_postgres::NoTls;

const BRIDGE: &str = "sy-br0";
const BRIDGE_IP: &str = "10.77.0.1";
const SUBNET: &str = "10.77.0.0/24";
const VIP: &str = "10.77.0.100";
const PROXY_PORT: u16 = 5000;
const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// One half of the pair.
struct Host {
    netns: &'static str,
    host_veth: &'static str,
    ip: &'static str,
    peer_id: u32,
    template: &'static str,
}

const A: Host = Host {
    netns: "sy-a",
    host_veth: "sy-a-br",
    ip: "10.77.0.11",
    peer_id: 1,
    template: "keepalived-master.conf",
};
const B: Host = Host {
    netns: "sy-b",
    host_veth: "sy-b-br",
    ip: "10.77.0.12",
    peer_id: 2,
    template: "keepalived-backup.conf",
};

/// Runs `ip ARGS`; Err carries its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why this machine cannot run the test, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !proc::is_root() {
        return Some("not running as root (network namespaces need it)".into());
    }
    let runs = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !runs("ip", "-V") {
        return Some("`ip` (iproute2) is not installed".into());
    }
    if !runs("keepalived", "--version") {
        return Some("keepalived is not installed (apt-get install keepalived)".into());
    }
    None
}

/// Only one run at a time may own the fixed names and subnet. An abstract unix
/// socket is the lock: the kernel releases it when the process ends, however it ends.
fn take_run_lock(within: Duration) -> Option<UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let name =
        std::os::unix::net::SocketAddr::from_abstract_name(b"switchyard-keepalived-vip").ok()?;
    let deadline = Instant::now() + within;
    loop {
        match UnixListener::bind_addr(&name) {
            Ok(lock) => return Some(lock),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(500)),
            Err(_) => return None,
        }
    }
}

/// Removes the namespaces and links; quiet about what is not there.
fn remove_topology() {
    for host in [&A, &B] {
        // Deleting a namespace deletes its eth0 and with it the veth's other end.
        let _ = ip(&["netns", "del", host.netns]);
        let _ = ip(&["link", "del", host.host_veth]);
    }
    let _ = ip(&["link", "del", BRIDGE]);
}

fn create_topology() -> Result<(), String> {
    ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["addr", "add", &format!("{BRIDGE_IP}/24"), "dev", BRIDGE])?;
    ip(&["link", "set", BRIDGE, "up"])?;
    for host in [&A, &B] {
        ip(&["netns", "add", host.netns])?;
        // The namespace's end is called eth0, the interface the shipped configs name.
        ip(&[
            "link",
            "add",
            host.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            host.netns,
        ])?;
        ip(&["link", "set", host.host_veth, "master", BRIDGE])?;
        ip(&["link", "set", host.host_veth, "up"])?;
        let addr = format!("{}/24", host.ip);
        ip(&["-n", host.netns, "addr", "add", &addr, "dev", "eth0"])?;
        ip(&["-n", host.netns, "link", "set", "eth0", "up"])?;
        // Each instance's admin listener is 127.0.0.1:8080 of its own namespace.
        ip(&["-n", host.netns, "link", "set", "lo", "up"])?;
    }
    Ok(())
}

/// Everything the test started; dropping it stops the processes, then removes the
/// namespaces and links, on success and on panic alike.
struct Lab {
    dir: tempfile::TempDir,
    switchyards: Vec<Supervised>,
    keepalived: Vec<Supervised>,
    _lock: UnixListener,
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first: a namespace is only freed once nothing runs in it.
        let mut all = std::mem::take(&mut self.keepalived);
        all.append(&mut self.switchyards);
        for process in &mut all {
            process.begin_shutdown();
        }
        for process in &mut all {
            process.wait_exit(Duration::from_secs(15));
        }
        remove_topology();
    }
}

impl Lab {
    /// None: the machine cannot run this test (printed why).
    fn create() -> Option<Lab> {
        if let Some(reason) = missing_prerequisite() {
            eprintln!("SKIPPED keepalived_vip: {reason}");
            return None;
        }
        let Some(lock) = take_run_lock(Duration::from_secs(180)) else {
            eprintln!("SKIPPED keepalived_vip: another run held the namespaces for 3 minutes");
            return None;
        };
        remove_topology();
        if let Err(e) = create_topology() {
            remove_topology();
            eprintln!("SKIPPED keepalived_vip: cannot build the network namespaces: {e}");
            return None;
        }
        Some(Lab {
            dir: tempfile::tempdir().expect("temp dir"),
            switchyards: Vec::new(),
            keepalived: Vec::new(),
            _lock: lock,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `program args` inside the host's namespace, output to `log`.
    fn spawn_in(&self, host: &Host, log: &str, program: &str, args: &[&str]) -> Supervised {
        let mut full = vec!["netns", "exec", host.netns, program];
        full.extend_from_slice(args);
        Supervised::spawn_with(
            "ip",
            &full,
            false,
            &self.path(log),
            None,
            SpawnOpts {
                stop_signal: Some("TERM"),
                grace: Some(Duration::from_secs(10)),
                ..SpawnOpts::default()
            },
        )
    }

    fn start_switchyard(&mut self, host: &Host, other: &Host, pg_port: u16) {
        let config = self.path(&format!("switchyard-{}.yaml", host.netns));
        std::fs::write(&config, switchyard_yaml(host, other, pg_port)).expect("write config");
        let config = config.to_string_lossy().into_owned();
        let log = format!("switchyard-{}.log", host.netns);
        let process = self.spawn_in(host, &log, BIN, &["run", "--config", &config]);
        self.switchyards.push(process);
    }

    fn start_keepalived(&mut self, host: &Host) {
        let config = self.path(&format!("keepalived-{}.conf", host.netns));
        std::fs::write(&config, keepalived_conf(host)).expect("write keepalived config");
        let file = |suffix: &str| {
            self.path(&format!("keepalived-{}.{suffix}", host.netns))
                .to_string_lossy()
                .into_owned()
        };
        let (config, pid, vrrp_pid) = (file("conf"), file("pid"), file("vrrp.pid"));
        let log = format!("keepalived-{}.log", host.netns);
        let args = [
            "--dont-fork",
            "--log-console",
            "--log-detail",
            "--no-syslog",
            "--vrrp",
            "--use-file",
            &config,
            "--pid",
            &pid,
            "--vrrp_pid",
            &vrrp_pid,
        ];
        let process = self.spawn_in(host, &log, "keepalived", &args);
        self.keepalived.push(process);
    }

    fn logs(&self) -> String {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        names.retain(|p| p.extension().is_some_and(|e| e == "log"));
        names.sort();
        let paths: Vec<&Path> = names.iter().map(PathBuf::as_path).collect();
        proc::tails(&paths, 25)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// A client through the VIP that reached `host`'s Switchyard, trying for 30 s.
    async fn client_via_vip(&self, host: &Host) -> tokio_postgres::Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let last = match via_vip().await {
                Some((client, proxy)) if proxy == host.ip => return client,
                other => other.map(|(_, proxy)| proxy),
            };
            if Instant::now() > deadline {
                panic!(
                    "no client via the VIP reached {} within 30 s (last reached: {last:?}){}",
                    host.netns,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls `check` every 200 ms; panics with every log's tail after `within`.
    async fn wait_until<F, Fut>(&self, within: Duration, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        while !check().await {
            if Instant::now() > deadline {
                panic!("{what}: not true within {within:?}{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn switchyard_yaml(host: &Host, other: &Host, pg_port: u16) -> String {
    format!(
        r#"listeners:
  - {{ name: rw, listen: "0.0.0.0:{PROXY_PORT}", route: primary }}
admin: {{ listen: "127.0.0.1:8080" }}
cluster:
  discovery: sql
  probe: {{ user: app, password: app_pw }}
  nodes:
    - {{ name: node0, host: "{BRIDGE_IP}", port: {pg_port} }}
  health: {{ interval: 200ms, timeout: 1s, rise: 2, fall: 3 }}
users:
  - {{ name: app, password: app_pw }}
shutdown_timeout: 2s
peer_id: {}
peers:
  - {{ id: {}, address: "{}:{PROXY_PORT}" }}
"#,
        host.peer_id, other.peer_id, other.ip
    )
}

/// The shipped config for this host with the test's addresses and binary path.
fn keepalived_conf(host: &Host) -> String {
    let path = format!(
        "{}/conf/keepalived/{}",
        env!("CARGO_MANIFEST_DIR"),
        host.template
    );
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    for (from, to) in [
        ("10.0.0.11", A.ip),
        ("10.0.0.12", B.ip),
        ("10.0.0.100/24", "10.77.0.100/24"),
        ("/usr/local/bin/switchyard", BIN),
        // Script security refuses a script under any directory a non-root user can
        // write to, and the build directory is wherever the checkout happens to be.
        ("    enable_script_security\n", ""),
    ] {
        assert!(
            text.contains(from),
            "{path} no longer contains {from:?}: update this test"
        );
        text = text.replace(from, to);
    }
    text
}

fn has_vip(host: &Host) -> bool {
    Command::new("ip")
        .args(["-n", host.netns, "-o", "-4", "addr", "show", "dev", "eth0"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(&format!("{VIP}/")))
}

fn healthy(host: &Host) -> bool {
    Command::new("ip")
        .args(["netns", "exec", host.netns, BIN, "health"])
        .args(["--admin", "127.0.0.1:8080", "--timeout", "1s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn proxy_addr(ip: &str) -> SocketAddr {
    format!("{ip}:{PROXY_PORT}").parse().expect("address")
}

/// A client through the VIP, and the address of the proxy it reached (as the
/// PostgreSQL server sees the connection's source); None if it cannot connect now.
async fn via_vip() -> Option<(tokio_postgres::Client, String)> {
    let connecting = try_connect(proxy_addr(VIP), "app", "app_pw");
    // Right after the VIP moved, a stale ARP entry can swallow a connection attempt.
    let client = tokio::time::timeout(Duration::from_secs(3), connecting)
        .await
        .ok()?
        .ok()?;
    let row = tokio::time::timeout(
        Duration::from_secs(5),
        client.query_one("select host(inet_client_addr())", &[]),
    )
    .await
    .ok()?
    .ok()?;
    let proxy: String = row.get(0);
    Some((client, proxy))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_vip_follows_a_healthy_switchyard_and_cancels_cross_the_pair() {
    let Some(mut lab) = tokio::task::block_in_place(Lab::create) else {
        return;
    };
    let cluster = tokio::task::block_in_place(|| {
        let cluster = PgCluster::start(0);
        cluster.listen_also(0, BRIDGE_IP, SUBNET);
        cluster
    });
    let pg_port = cluster.port(0);
    lab.start_switchyard(&A, &B, pg_port);
    lab.start_switchyard(&B, &A, pg_port);
    for host in [&A, &B] {
        let what = format!("switchyard in {} reports a primary", host.netns);
        lab.wait_until(Duration::from_secs(30), &what, || async {
            tokio::task::block_in_place(|| healthy(host))
        })
        .await;
    }
    lab.start_keepalived(&A);
    lab.start_keepalived(&B);
    lab.wait_until(Duration::from_secs(30), "the VIP is on A only", || async {
        tokio::task::block_in_place(|| has_vip(&A) && !has_vip(&B))
    })
    .await;

    // Through the VIP a client reaches A.
    let idle_client = lab.client_via_vip(&A).await;

    // A query running on A, cancelled by a request sent to B's own address.
    let client = lab.client_via_vip(&A).await;
    let token = client.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move { client.batch_execute("select pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let to_b = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(proxy_addr(B.ip)))
        .await
        .expect("B reachable in time")
        .expect("connect to B");
    tokio::time::timeout(Duration::from_secs(5), token.cancel_query_raw(to_b, NoTls))
        .await
        .expect("cancel sent in time")
        .expect("cancel sent");
    let result = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .unwrap_or_else(|_| panic!("the query was not cancelled{}", lab.logs()))
        .expect("join");
    let error = result.expect_err("the query was cancelled");
    assert_eq!(error.code().map(|c| c.code()), Some("57014"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // B logs once A has closed the relayed request, which may be after the query
    // already ended.
    lab.wait_until(
        Duration::from_secs(10),
        "B logs the cancel it passed to A",
        || async {
            lab.log("switchyard-sy-b.log")
                .contains("cancel request passed to peer")
        },
    )
    .await;

    // A's Switchyard stops (SIGTERM): its /health fails at once, Keepalived gives
    // the VIP up, B takes it, and clients reconnecting through it reach B.
    let stopped_at = Instant::now();
    tokio::task::block_in_place(|| lab.switchyards[0].stop());
    let after_stop =
        tokio::time::timeout(Duration::from_secs(5), idle_client.simple_query("select 1")).await;
    assert!(
        matches!(after_stop, Ok(Err(_))),
        "A's clients are disconnected when it stops"
    );
    lab.wait_until(Duration::from_secs(30), "the VIP moves to B", || async {
        tokio::task::block_in_place(|| has_vip(&B) && !has_vip(&A))
    })
    .await;
    eprintln!(
        "the VIP moved to B {:?} after SIGTERM to A",
        stopped_at.elapsed()
    );
    lab.client_via_vip(&B).await;
    eprintln!(
        "a client via the VIP reached B {:?} after SIGTERM to A",
        stopped_at.elapsed()
    );
    // The VIP left A because its check failed, not because its Keepalived died.
    assert!(
        lab.log("keepalived-sy-a.log")
            .contains("Entering FAULT STATE"),
        "A's Keepalived went to FAULT{}",
        lab.logs()
    );
    drop(cluster);
    drop(lab);
    for host in [&A, &B] {
        assert!(
            ip(&["netns", "pids", host.netns]).is_err(),
            "namespace {} is gone",
            host.netns
        );
    }
}
