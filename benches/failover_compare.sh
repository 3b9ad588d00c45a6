#!/usr/bin/env bash
# Failover under write load: Switchyard vs. HAProxy (as the Patroni guides configure
# it) vs. PgBouncer in front of that HAProxy, across a real `patronictl switchover`.
#
#   bash benches/failover_compare.sh                      # 3 rounds x 3 targets x 40 s (~10 min)
#   ROUNDS=1 DURATION=20 bash benches/failover_compare.sh # quick look
#   TARGETS=switchyard,haproxy bash benches/failover_compare.sh
#
# The work is done by a Rust program (benches/failover_compare/, run with
# `cargo bench --bench failover_compare`) that reuses the test harness: it starts one
# Patroni + etcd cluster (three PostgreSQL 15 nodes on loopback), then, per round and
# target, starts the target fresh, runs CLIENTS writers through it for DURATION
# seconds, switches the primary over SWITCH_AT seconds in (node1 and node2 in turn),
# and checks every acknowledged write on the new primary. The Markdown report goes to
# benches/results/failover.md and is printed.
#
# Environment (defaults in brackets):
#   ROUNDS [3]  runs per target     CLIENTS [20]  concurrent writers
#   DURATION [40]  seconds of load per run    SWITCH_AT [5]  seconds before the switchover
#   TARGETS [switchyard,haproxy,pgbouncer]   (pgbouncer = PgBouncer in front of HAProxy)
#   RETRY_DELAY_MS [100]  a client's pause after a failed INSERT or connection attempt
#   HAPROXY_INTER [1s]  HAProxy's check interval (the guides' `inter 1s`), e.g. 500ms
#   RESULTS [benches/results/failover.md]
#   KEEP_LOGS [0]  1 = keep the work dir (every target's config and log) in /tmp
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

export ROUNDS=${ROUNDS:-3} CLIENTS=${CLIENTS:-20} DURATION=${DURATION:-40} SWITCH_AT=${SWITCH_AT:-5}
export TARGETS=${TARGETS:-switchyard,haproxy,pgbouncer}
export RETRY_DELAY_MS=${RETRY_DELAY_MS:-100} KEEP_LOGS=${KEEP_LOGS:-0} HAPROXY_INTER=${HAPROXY_INTER:-1s}
export RESULTS=${RESULTS:-$BENCH_DIR/results/failover.md}

IFS=, read -r -a TARGET_LIST <<<"$TARGETS"
for t in "${TARGET_LIST[@]}"; do
    case $t in switchyard|haproxy|pgbouncer) ;; *) die "unknown target '$t' in TARGETS" ;; esac
done
has_target() { local t; for t in "${TARGET_LIST[@]}"; do [[ $t == "$1" ]] && return 0; done; return 1; }

# The harness runs PostgreSQL, Patroni and PgBouncer as the `postgres` user when root.
if [[ $EUID -eq 0 ]]; then id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user"; fi
for tool in patroni patronictl etcd psql; do
    command -v "$tool" >/dev/null || die "$tool missing: apt-get install -y patroni etcd-server postgresql-15"
done
if has_target haproxy || has_target pgbouncer; then
    command -v haproxy >/dev/null || die "haproxy missing: apt-get install -y haproxy"
fi
if has_target pgbouncer; then command -v pgbouncer >/dev/null || die "pgbouncer missing: apt-get install -y pgbouncer"; fi

log "rounds $ROUNDS, targets $TARGETS, $CLIENTS clients, ${DURATION}s per run, switchover at ${SWITCH_AT}s"
# cargo builds the bench and the switchyard binary it starts (bench profile = release).
cd "$REPO"
exec cargo bench --bench failover_compare
