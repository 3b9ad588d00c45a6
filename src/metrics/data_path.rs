//! Data-path figures (transactions, queries, bytes, checkout waits, transaction
//! durations) kept in per-thread shards and summed only when `/metrics` is scraped.
//!
//! They are recorded once or more per transaction, from every worker thread. Through
//! the `metrics` facade each record is a contended atomic on a line shared by all
//! workers, plus a clock read and an epoch-protected push for every histogram sample.
//! Here a record is a relaxed add on a cache line owned by the recording thread's
//! shard; the cost moves to the scrape, which is rare.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::SECONDS_BUCKETS;

/// Enough that the tokio workers of a large machine rarely share a shard; a shared
/// shard is still correct, only slower.
const SHARDS: usize = 16;
const BUCKETS: usize = SECONDS_BUCKETS.len();

/// The bucket bounds in nanoseconds, so a record compares integers.
const BOUNDS_NANOS: [u64; BUCKETS] = {
    let mut bounds = [0u64; BUCKETS];
    let mut i = 0;
    while i < BUCKETS {
        bounds[i] = (SECONDS_BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    bounds
};

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

fn shard_index() -> usize {
    // During thread teardown the slot is gone; any shard is still correct.
    SHARD.try_with(|s| *s).unwrap_or(0)
}

/// Samples of one histogram in one shard: per-bucket (not cumulative) counts, with
/// the last slot for samples above every bound.
#[derive(Default)]
struct HistogramCells {
    buckets: [AtomicU64; BUCKETS + 1],
    sum_nanos: AtomicU64,
}

impl HistogramCells {
    fn record(&self, value: Duration) {
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        let slot = BOUNDS_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(BUCKETS);
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// One shard of one listener's figures, on cache lines of its own.
#[derive(Default)]
#[repr(align(128))]
struct Shard {
    transactions: AtomicU64,
    queries: AtomicU64,
    received_bytes: AtomicU64,
    sent_bytes: AtomicU64,
    checkout_wait: HistogramCells,
    transaction_duration: HistogramCells,
}

/// A listener's figures summed over its shards.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub transactions: u64,
    pub queries: u64,
    pub received_bytes: u64,
    pub sent_bytes: u64,
    /// Time transactions held their servers.
    pub transaction_micros: u64,
    /// Time clients waited for a server (including a failover hold).
    pub wait_micros: u64,
}

/// One listener's data-path figures.
pub struct ListenerMetrics {
    listener: String,
    shards: Box<[Shard]>,
}

impl ListenerMetrics {
    pub fn new(listener: &str) -> ListenerMetrics {
        ListenerMetrics {
            listener: listener.to_string(),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }

    pub fn listener(&self) -> &str {
        &self.listener
    }

    fn shard(&self) -> &Shard {
        &self.shards[shard_index() % self.shards.len()]
    }

    pub fn add_queries(&self, n: u64) {
        self.shard().queries.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes read from clients.
    pub fn add_received_bytes(&self, n: u64) {
        self.shard().received_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes written to clients.
    pub fn add_sent_bytes(&self, n: u64) {
        self.shard().sent_bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub fn record_checkout_wait(&self, waited: Duration) {
        self.shard().checkout_wait.record(waited);
    }

    pub fn record_transaction(&self, took: Duration) {
        let shard = self.shard();
        shard.transactions.fetch_add(1, Ordering::Relaxed);
        shard.transaction_duration.record(took);
    }

    /// The listener's totals so far, for the admin console's SHOW STATS.
    pub fn totals(&self) -> Totals {
        Totals {
            transactions: self.total(|s| &s.transactions),
            queries: self.total(|s| &s.queries),
            received_bytes: self.total(|s| &s.received_bytes),
            sent_bytes: self.total(|s| &s.sent_bytes),
            transaction_micros: self.sum_micros(|s| &s.transaction_duration),
            wait_micros: self.sum_micros(|s| &s.checkout_wait),
        }
    }

    fn sum_micros(&self, cells: impl Fn(&Shard) -> &HistogramCells) -> u64 {
        self.shards
            .iter()
            .map(|s| cells(s).sum_nanos.load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
            / 1000
    }

    fn total(&self, field: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| field(s).load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }

    /// Cumulative bucket counts (the last is +Inf, the sample count) and the sum in
    /// seconds.
    fn histogram(&self, cells: impl Fn(&Shard) -> &HistogramCells) -> ([u64; BUCKETS + 1], f64) {
        let mut counts = [0u64; BUCKETS + 1];
        let mut sum_nanos = 0u64;
        for shard in self.shards.iter() {
            let cells = cells(shard);
            for (count, bucket) in counts.iter_mut().zip(&cells.buckets) {
                *count = count.wrapping_add(bucket.load(Ordering::Relaxed));
            }
            sum_nanos = sum_nanos.wrapping_add(cells.sum_nanos.load(Ordering::Relaxed));
        }
        let mut running = 0u64;
        for count in counts.iter_mut() {
            running = running.wrapping_add(*count);
            *count = running;
        }
        (counts, sum_nanos as f64 / 1e9)
    }
}

type CounterField = fn(&Shard) -> &AtomicU64;
type HistogramField = fn(&Shard) -> &HistogramCells;

const COUNTERS: [(&str, CounterField); 4] = [
    ("switchyard_transactions_total", |s| &s.transactions),
    ("switchyard_queries_total", |s| &s.queries),
    ("switchyard_client_received_bytes_total", |s| {
        &s.received_bytes
    }),
    ("switchyard_client_sent_bytes_total", |s| &s.sent_bytes),
];

const HISTOGRAMS: [(&str, HistogramField); 2] = [
    ("switchyard_checkout_wait_seconds", |s| &s.checkout_wait),
    ("switchyard_transaction_duration_seconds", |s| {
        &s.transaction_duration
    }),
];

/// Appends the Prometheus text exposition of these listeners' figures to `out`,
/// one family at a time.
pub fn render<'a>(listeners: impl Iterator<Item = &'a ListenerMetrics> + Clone, out: &mut String) {
    for (name, field) in COUNTERS {
        let _ = writeln!(out, "# TYPE {name} counter");
        for metrics in listeners.clone() {
            let label = escape_label(&metrics.listener);
            let _ = writeln!(
                out,
                "{name}{{listener=\"{label}\"}} {}",
                metrics.total(field)
            );
        }
        out.push('\n');
    }
    for (name, field) in HISTOGRAMS {
        let _ = writeln!(out, "# TYPE {name} histogram");
        for metrics in listeners.clone() {
            let label = escape_label(&metrics.listener);
            let (counts, sum) = metrics.histogram(field);
            for (bound, count) in SECONDS_BUCKETS.iter().zip(&counts) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{listener=\"{label}\",le=\"{bound}\"}} {count}"
                );
            }
            let all = counts[BUCKETS];
            let _ = writeln!(
                out,
                "{name}_bucket{{listener=\"{label}\",le=\"+Inf\"}} {all}"
            );
            let _ = writeln!(out, "{name}_sum{{listener=\"{label}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{listener=\"{label}\"}} {all}");
        }
        out.push('\n');
    }
}

/// Label values escaped as the text format requires (backslash, quote, newline).
fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(metrics: &[&ListenerMetrics]) -> String {
        let mut out = String::new();
        render(metrics.iter().copied(), &mut out);
        out
    }

    #[test]
    fn records_from_many_threads_add_up() {
        let metrics = std::sync::Arc::new(ListenerMetrics::new("rw"));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let metrics = std::sync::Arc::clone(&metrics);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        metrics.record_transaction(Duration::from_micros(300));
                        metrics.add_queries(2);
                        metrics.add_sent_bytes(10);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("recording thread");
        }
        let text = exposition(&[&metrics]);
        assert!(text.contains("switchyard_transactions_total{listener=\"rw\"} 8000\n"));
        assert!(text.contains("switchyard_queries_total{listener=\"rw\"} 16000\n"));
        assert!(text.contains("switchyard_client_sent_bytes_total{listener=\"rw\"} 80000\n"));
        assert!(text.contains("switchyard_client_received_bytes_total{listener=\"rw\"} 0\n"));
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let metrics = ListenerMetrics::new("ro");
        metrics.record_checkout_wait(Duration::from_micros(200)); // le 0.0005
        metrics.record_checkout_wait(Duration::from_micros(500)); // le 0.0005, on the bound
        metrics.record_checkout_wait(Duration::from_millis(3)); // le 0.005
        metrics.record_checkout_wait(Duration::from_secs(100)); // only +Inf
        let text = exposition(&[&metrics]);
        let line = |le: &str| {
            format!("switchyard_checkout_wait_seconds_bucket{{listener=\"ro\",le=\"{le}\"}}")
        };
        let value = |prefix: &str| -> f64 {
            let row = text
                .lines()
                .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
                .unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
            row[prefix.len()..].trim().parse().expect("a number")
        };
        assert_eq!(value(&line("0.0005")), 2.0);
        assert_eq!(value(&line("0.0025")), 2.0);
        assert_eq!(value(&line("0.005")), 3.0);
        assert_eq!(value(&line("60")), 3.0);
        assert_eq!(value(&line("+Inf")), 4.0);
        assert_eq!(
            value("switchyard_checkout_wait_seconds_count{listener=\"ro\"}"),
            4.0
        );
        let sum = value("switchyard_checkout_wait_seconds_sum{listener=\"ro\"}");
        assert!((sum - 100.0037).abs() < 1e-9, "sum {sum}");
        assert_eq!(
            value("switchyard_transaction_duration_seconds_count{listener=\"ro\"}"),
            0.0
        );
    }

    #[test]
    fn families_are_grouped_under_one_type_line_and_labels_escaped() {
        let a = ListenerMetrics::new("a");
        let b = ListenerMetrics::new("say \"hi\"\\");
        let text = exposition(&[&a, &b]);
        assert_eq!(
            text.matches("# TYPE switchyard_queries_total counter")
                .count(),
            1
        );
        assert!(text.contains("switchyard_queries_total{listener=\"a\"} 0\n"));
        assert!(text.contains("switchyard_queries_total{listener=\"say \\\"hi\\\"\\\\\"} 0\n"));
        assert_eq!(
            text.matches("# TYPE switchyard_transaction_duration_seconds histogram")
                .count(),
            1
        );
    }
}
