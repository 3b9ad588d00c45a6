//! One authenticated client cannot take the proxy's memory: 1 GiB of CopyData
//! outside COPY (nothing ever answers it, so a copy kept for a resend would grow
//! without end) and 1,000 rejected 1 MiB Parses (a statement map that kept them)
//! leave the proxy's peak RSS within a stated bound, while another client keeps
//! being served. Its own test binary: the proxy runs in this process, so the
//! process's peak RSS is the proxy's (plus this test's small, reused buffers).

mod harness;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use harness::clients::*;
use harness::pg::PgCluster;
use harness::proxy::*;
use harness::raw_client::*;
use harness::wait::blocking;

/// What the flood may add to the process's peak resident memory.
const BOUND_BYTES: u64 = 64 << 20;

/// A field of /proc/self/status in bytes (VmRSS, VmHWM).
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

#[tokio::test(flavor = "multi_thread")]
async fn one_client_cannot_take_the_proxys_memory() {
    let cluster = blocking(|| PgCluster::start(0)).await;
    let (proxy, _api) = proxy_for(cluster.port(0), "pool: { mode: transaction, size: 2 }\n").await;
    let rw = proxy.listener_addr("rw").expect("rw");

    // Another client keeps working throughout.
    let bystander = connect(rw, "app", "app_pw").await;
    let served = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let bystander_task = {
        let (served, stop) = (Arc::clone(&served), Arc::clone(&stop));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let answer = tokio::time::timeout(
                    Duration::from_secs(10),
                    bystander.simple_query("SELECT 1"),
                )
                .await;
                assert!(
                    matches!(answer, Ok(Ok(_))),
                    "the other client is served: {answer:?}"
                );
                served.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let mut flooder = RawClient::login(rw, "flooder").await;
    let warm = flooder.round_trip(&query_msg("SELECT 1")).await;
    assert_eq!(data_rows(&warm), row(&["1"]));
    let baseline = proc_status_bytes("VmHWM");

    // 1 GiB of CopyData outside COPY: PostgreSQL ignores it, nothing answers.
    let chunk = message(b'd', &vec![b'x'; (1 << 20) - 5]);
    for _ in 0..1024 {
        flooder.send(&chunk).await;
    }
    let after_copy = flooder.round_trip(&query_msg("SELECT 2")).await;
    assert_eq!(
        data_rows(&after_copy),
        row(&["2"]),
        "the flooder is still served"
    );
    let copy_peak = proc_status_bytes("VmHWM");

    // 1,000 rejected 1 MiB Parses, each a different named statement.
    let padding = "x".repeat(1 << 20);
    for i in 0..1000 {
        let sql = format!("/* {padding} */ SELECT * FROM no_such_table_{i}");
        let mut bytes = parse_msg(&format!("rejected_{i}"), &sql);
        bytes.extend(sync_msg());
        let replies = flooder.round_trip(&bytes).await;
        assert_eq!(
            error_responses(&replies).len(),
            1,
            "Parse {i} is rejected by the server"
        );
    }
    let after_parse = flooder.round_trip(&query_msg("SELECT 3")).await;
    assert_eq!(data_rows(&after_parse), row(&["3"]));
    let parse_peak = proc_status_bytes("VmHWM");

    stop.store(true, Ordering::Relaxed);
    bystander_task.await.expect("the other client never failed");
    assert!(
        served.load(Ordering::Relaxed) > 10,
        "the other client was served meanwhile"
    );
    let mb = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    eprintln!(
        "peak RSS: baseline {:.1} MiB, after 1 GiB CopyData {:.1} MiB, after 1000 rejected \
         1 MiB Parses {:.1} MiB (now {:.1} MiB)",
        mb(baseline),
        mb(copy_peak),
        mb(parse_peak),
        mb(proc_status_bytes("VmRSS"))
    );
    assert!(
        copy_peak < baseline + BOUND_BYTES,
        "1 GiB of CopyData raised the peak RSS by {:.1} MiB (bound {:.0} MiB)",
        mb(copy_peak - baseline),
        mb(BOUND_BYTES)
    );
    assert!(
        parse_peak < baseline + BOUND_BYTES,
        "1000 rejected Parses raised the peak RSS by {:.1} MiB (bound {:.0} MiB)",
        mb(parse_peak - baseline),
        mb(BOUND_BYTES)
    );
    drop(proxy);
    blocking(move || drop(cluster)).await;
}
