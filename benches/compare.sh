#!/usr/bin/env bash
# Switchyard vs. direct PostgreSQL vs. PgBouncer vs. HAProxy, on one machine.
#
#   bash benches/compare.sh                 # full run: 3 rounds x 10 s, 5000 idle clients
#   QUICK=1 bash benches/compare.sh         # smoke test: 1 round x 3 s, 500 idle clients
#   TARGETS=direct,switchyard bash benches/compare.sh
#
# One PostgreSQL 15 server (SCRAM auth) is created in a temp dir and every target
# sits in front of it: "direct" (pgbench -> PostgreSQL), "switchyard" (release build
# of this crate, fake Patroni API), "pgbouncer" (transaction pooling) and "haproxy"
# (plain TCP proxy, no pooling); optionally "tokio-relay" (benches/tokio_relay: a bare
# copy loop on tokio's multi-threaded runtime, one server connection per client: the
# CPU floor of any tokio-based proxy). The same pgbench workloads run against each target,
# the target order rotating from round to round; the median TPS per workload and
# target and its ratio to "direct" are printed as a Markdown table and written to
# benches/results/latest.md (QUICK runs: benches/results/quick.md).
#
# Environment (defaults in brackets):
#   ROUNDS [3]  DURATION [10] seconds per pgbench run  WARMUP [2] seconds per target
#   TARGETS [direct,switchyard,pgbouncer,haproxy]  (also: tokio-relay; baseline)
#   BASELINE_BIN  another switchyard binary (an older build) run as target
#     "baseline" with the same config on other ports: before/after in one run
#   SY_WORKERS  runtime.workers for switchyard [its default: the CPUs]
#   BASELINE_WORKERS  runtime.workers for the baseline [none: builds before the
#     option had no runtime: section]
#   WORKLOADS [select,prepared,c500,connect]
#   IDLE_CLIENTS [5000]  idle connections for the memory test (0 = skip it)
#   C500_EXTRA [15] seconds added to -T of the 500-client runs: pgbench's -T clock
#     starts before its 500 SCRAM logins, which take seconds (tps excludes them)
#   SCALE [10] pgbench scale   POOL_SIZE [20] (switchyard and pgbouncer)
#   SY_POOL [1]  0 = leave the `pool:` block out of switchyard's config (for builds
#     without pooling; builds with it then use their defaults)
#   SY_POOL_MODE [transaction]  transaction | session
#   SKIP_BUILD [0]  1 = use the existing target/release/switchyard
#   CLIENT_TLS [0]  1 = clients reach Switchyard and PgBouncer over TLS
#     (sslmode=require; Switchyard `tls: mode: require`, PgBouncer
#     `client_tls_sslmode = require`, one self-signed ECDSA P-256 certificate);
#     targets then default to switchyard,pgbouncer and the idle test is skipped
#   KEEP_TMP [kept only on failure, without the data dir]  1 = always keep, 0 = never
#   RESULTS [benches/results/latest.md]
#   PG_BIN [/usr/lib/postgresql/15/bin, else `pg_config --bindir`]
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-3} WARMUP=${WARMUP:-1} IDLE_CLIENTS=${IDLE_CLIENTS:-500}
    RESULTS=${RESULTS:-$BENCH_DIR/results/quick.md}
fi
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
IDLE_CLIENTS=${IDLE_CLIENTS:-5000}
CLIENT_TLS=${CLIENT_TLS:-0}
if [[ $CLIENT_TLS == 1 ]]; then
    TARGETS=${TARGETS:-switchyard,pgbouncer}
    IDLE_CLIENTS=0
fi
TARGETS=${TARGETS:-direct,switchyard,pgbouncer,haproxy}
WORKLOADS=${WORKLOADS:-select,prepared,c500,connect}
SCALE=${SCALE:-10}
C500_EXTRA=${C500_EXTRA:-15}
POOL_SIZE=${POOL_SIZE:-20}
SY_POOL=${SY_POOL:-1}
SY_POOL_MODE=${SY_POOL_MODE:-transaction}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-}
RESULTS=${RESULTS:-$BENCH_DIR/results/latest.md}

if [[ -z ${PG_BIN:-} ]]; then
    if [[ -x /usr/lib/postgresql/15/bin/postgres ]]; then PG_BIN=/usr/lib/postgresql/15/bin
    else PG_BIN=$(pg_config --bindir); fi
fi
PGBENCH=$PG_BIN/pgbench
PSQL=$(command -v psql || echo "$PG_BIN/psql")
SY_BIN=${SY_BIN:-$REPO/target/release/switchyard}
BASELINE_BIN=${BASELINE_BIN:-}
SY_WORKERS=${SY_WORKERS:-}
BASELINE_WORKERS=${BASELINE_WORKERS:-}
PYTHON=${PYTHON:-python3}

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

IFS=, read -r -a TARGET_LIST <<<"$TARGETS"
IFS=, read -r -a WORKLOAD_LIST <<<"$WORKLOADS"
for t in "${TARGET_LIST[@]}"; do
    case $t in direct|switchyard|baseline|pgbouncer|haproxy|tokio-relay) ;; *) die "unknown target '$t' in TARGETS" ;; esac
done
for w in "${WORKLOAD_LIST[@]}"; do
    case $w in select|prepared|c500|connect) ;; *) die "unknown workload '$w' in WORKLOADS" ;; esac
done
has_target() { local t; for t in "${TARGET_LIST[@]}"; do [[ $t == "$1" ]] && return 0; done; return 1; }

for tool in "$PG_BIN/initdb" "$PG_BIN/pg_ctl" "$PGBENCH" "$PSQL"; do
    [[ -x $tool ]] || die "missing $tool"
done
command -v "$PYTHON" >/dev/null || die "python3 is needed"
command -v curl >/dev/null || die "curl is needed"
if has_target pgbouncer; then command -v pgbouncer >/dev/null || die "pgbouncer missing: apt-get install -y pgbouncer"; fi
if has_target haproxy; then command -v haproxy >/dev/null || die "haproxy missing: apt-get install -y haproxy"; fi

# Many sockets: 500 pgbench clients, thousands of idle clients, proxies on both sides.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)

# PostgreSQL refuses to run as root: run it (and PgBouncer) as `postgres` then.
if [[ $EUID -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user"
    as_pg() { runuser -u postgres -- "$@"; }
    PG_OWNER=postgres
else
    as_pg() { "$@"; }
    PG_OWNER=$(id -un)
fi

# ---------------------------------------------------------------- state and cleanup
TMP=""
PG_DATA="" PG_SOCK=""
PATRONI_PID="" SY_PID="" BL_PID="" INSTANCE_PID="" PGB_PID="" HAP_PID="" TR_PID="" IDLE_PID=""
RUN_PIDS=()  # the pgbench processes of the run in progress

# alive PID: the process exists and is not a zombie (PID 1 in containers may not reap
# the orphaned postmaster at once).
alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]]
}

any_alive() {  # any_alive PID...: at least one of them is alive
    local pid
    for pid in "$@"; do alive "$pid" && return 0; done
    return 1
}

stop_pid() {  # stop_pid PID [seconds]: SIGTERM, wait, then SIGKILL
    local pid=$1 wait_s=${2:-10} i
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < wait_s * 10; i++)); do
        alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    log "pid $pid did not stop after ${wait_s}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

stop_postgres() {
    [[ -n $PG_DATA && -f $PG_DATA/postmaster.pid ]] || return 0
    local pm
    pm=$(head -1 "$PG_DATA/postmaster.pid" 2>/dev/null || true)
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -n $pm ]] && alive "$pm" || return 0
        sleep 0.2
    done
    log "postmaster $pm still running; sending SIGQUIT"
    kill -QUIT "$pm" 2>/dev/null || true
    sleep 2
    alive "$pm" && kill -KILL "$pm" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    for pid in "${RUN_PIDS[@]}"; do stop_pid "$pid" 5; done
    [[ -n $IDLE_PID ]] && stop_pid "$IDLE_PID" 5
    stop_pid "$SY_PID" 15
    stop_pid "${BL_PID:-}" 15
    stop_pid "${INSTANCE_PID:-}" 15
    stop_pid "$PGB_PID" 10
    stop_pid "$HAP_PID" 10
    stop_pid "$TR_PID" 5
    stop_pid "$PATRONI_PID" 5
    stop_postgres
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ $KEEP_TMP == 1 ]]; then
            log "kept $TMP"
        elif [[ $rc -ne 0 && $KEEP_TMP != 0 ]]; then
            rm -rf "$TMP/pg/data"
            log "run failed (exit $rc); logs kept in $TMP (KEEP_TMP=0 removes them)"
        else
            rm -rf "$TMP"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

free_ports() {  # free_ports N: N distinct free TCP ports on 127.0.0.1
    "$PYTHON" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# ---------------------------------------------------------------- build
TR_BIN=${TR_BIN:-$REPO/target/release/examples/tokio_relay}
if [[ $SKIP_BUILD != 1 ]]; then
    log "building switchyard (cargo build --release)"
    (cd "$REPO" && cargo build --release) >&2 || die "cargo build --release failed"
    if has_target tokio-relay; then
        (cd "$REPO" && cargo build --release --example tokio_relay) >&2 || die "cannot build benches/tokio_relay"
    fi
fi
[[ -x $SY_BIN ]] || die "no binary at $SY_BIN"
if has_target tokio-relay; then [[ -x $TR_BIN ]] || die "no binary at $TR_BIN"; fi
if has_target baseline; then [[ -x $BASELINE_BIN ]] || die "target baseline needs BASELINE_BIN (a switchyard binary)"; fi

TMP=$(mktemp -d /tmp/switchyard-bench.XXXXXX)
chmod 755 "$TMP"
mkdir -p "$TMP/logs" "$TMP/runs" "$TMP/pg" "$TMP/pgbouncer"
chown "$PG_OWNER" "$TMP/pg" "$TMP/pgbouncer"
log "work dir $TMP (fd limit $FD_LIMIT)"

read -r PG_PORT API_PORT SY_PORT SY_ADMIN PGB_PORT HAP_PORT TR_PORT BL_PORT BL_ADMIN <<<"$(free_ports 9)"

export PGPASSWORD=bench_pw
unset PGSERVICE PGSERVICEFILE PGOPTIONS PGSSLMODE PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSFILE || true
export PGCONNECT_TIMEOUT=10

# ---------------------------------------------------------------- PostgreSQL
PG_DATA=$TMP/pg/data
PG_SOCK=$TMP/pg/sock
as_pg mkdir -p "$PG_SOCK"
log "initdb + PostgreSQL on 127.0.0.1:$PG_PORT"
as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C \
    --auth-local=trust --auth-host=scram-sha-256 >"$TMP/logs/initdb.log" 2>&1 \
    || { cat "$TMP/logs/initdb.log" >&2; die "initdb failed"; }
as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null <<EOF

# --- switchyard benches/compare.sh
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK'
max_connections = 700
shared_buffers = 128MB
fsync = off
synchronous_commit = off
password_encryption = 'scram-sha-256'
logging_collector = off
EOF
as_pg tee "$PG_DATA/pg_hba.conf" >/dev/null <<'EOF'
local all all trust
host  all all 127.0.0.1/32 scram-sha-256
EOF
as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$TMP/pg/postgres.log" -w -t 60 start >/dev/null \
    || { cat "$TMP/pg/postgres.log" >&2; die "PostgreSQL did not start"; }

pg_admin() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$PG_PORT" -U postgres -d "${PGA_DB:-postgres}" "$@"; }
pg_admin -c "CREATE ROLE bench LOGIN PASSWORD 'bench_pw'" -c "CREATE DATABASE bench OWNER bench"
log "pgbench -i -s $SCALE"
"$PGBENCH" -i -q -s "$SCALE" -h "$PG_SOCK" -p "$PG_PORT" -U bench bench >"$TMP/logs/pgbench-init.log" 2>&1 \
    || { cat "$TMP/logs/pgbench-init.log" >&2; die "pgbench -i failed"; }
SCRAM_VERIFIER=$(pg_admin -At -c "SELECT rolpassword FROM pg_authid WHERE rolname = 'bench'")
[[ $SCRAM_VERIFIER == SCRAM-SHA-256\$* ]] || die "bench's password is not a SCRAM verifier: $SCRAM_VERIFIER"

# server_conns PID: established TCP connections from process PID to PostgreSQL
# (pgbench itself for "direct", else the proxy's server connections).
# Several PIDs (the pgbench processes of one direct run) are summed.
server_conns() {
    [[ -n $1 ]] || { echo "?"; return 0; }
    local pattern
    pattern=$(printf 'pid=%s,|' $1)
    ss -Htnp state established "( dport = :$PG_PORT )" 2>/dev/null | grep -cE "${pattern%|}" || true
}

# wait_sql PORT NAME [PID]: waits until `select 1` works as bench through
# 127.0.0.1:PORT (SCRAM end to end); gives up after ~30 s or when PID exits.
wait_sql() {
    local port=$1 what=$2 pid=${3:-} i
    for ((i = 0; i < 150; i++)); do
        [[ -z $pid ]] || alive "$pid" || { log "$what exited"; return 1; }
        if "$PSQL" -X -At "host=127.0.0.1 port=$port user=bench dbname=bench" -c 'select 1' >/dev/null 2>"$TMP/logs/wait-$what.err"; then
            return 0
        fi
        sleep 0.2
    done
    cat "$TMP/logs/wait-$what.err" >&2
    return 1
}
wait_sql "$PG_PORT" direct || die "cannot log in to PostgreSQL as bench over TCP"

# Client TLS: one certificate for both proxies, and what pgbench adds to its
# connection string for them (PostgreSQL itself is reached without TLS).
TLS_CONN=""
if [[ $CLIENT_TLS == 1 ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj /CN=localhost -days 2 -keyout "$TMP/pgbouncer/tls.key" \
        -out "$TMP/pgbouncer/tls.pem" >"$TMP/logs/openssl.log" 2>&1 \
        || { cat "$TMP/logs/openssl.log" >&2; die "cannot make a certificate"; }
    TLS_CONN=" sslmode=require"
fi

# ---------------------------------------------------------------- switchyard
SY_CONF=$TMP/switchyard.yaml
SY_POOL_USED="no pool: block (the build's defaults)"
# start_instance NAME BIN CONF PORT ADMIN: runs a Switchyard binary until its
# /health answers and a login through it works; its pid is left in INSTANCE_PID.
start_instance() {
    local name=$1 bin=$2 conf=$3 port=$4 admin=$5 i
    "$bin" run --config "$conf" >>"$TMP/logs/$name.log" 2>&1 &
    INSTANCE_PID=$!
    for ((i = 0; i < 150; i++)); do
        alive "$INSTANCE_PID" || { tail -20 "$TMP/logs/$name.log" >&2; die "$name exited"; }
        curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$admin/health" 2>/dev/null && break
        sleep 0.2
    done
    ((i < 150)) || { tail -20 "$TMP/logs/$name.log" >&2; die "$name /health never returned 200"; }
    wait_sql "$port" "$name" "$INSTANCE_PID" || { tail -20 "$TMP/logs/$name.log" >&2; die "cannot log in through $name"; }
}
start_switchyard() {
    start_instance switchyard "$SY_BIN" "$SY_CONF" "$SY_PORT" "$SY_ADMIN"
    SY_PID=$INSTANCE_PID
}
stop_switchyard() { stop_pid "$SY_PID" 15; SY_PID=""; }

# The baseline: the same config with its own ports, another binary.
start_baseline() {
    sed -e "s/127.0.0.1:$SY_PORT\"/127.0.0.1:$BL_PORT\"/" -e "s/127.0.0.1:$SY_ADMIN\"/127.0.0.1:$BL_ADMIN\"/" \
        -e '/^runtime:/d' "$SY_CONF" >"$TMP/baseline.yaml"
    [[ -z $BASELINE_WORKERS ]] || printf 'runtime: { workers: %s }\n' "$BASELINE_WORKERS" >>"$TMP/baseline.yaml"
    start_instance baseline "$BASELINE_BIN" "$TMP/baseline.yaml" "$BL_PORT" "$BL_ADMIN"
    BL_PID=$INSTANCE_PID
}

if has_target switchyard || has_target baseline; then
    "$PYTHON" "$BENCH_DIR/fake_patroni.py" "$API_PORT" 2>>"$TMP/logs/fake_patroni.log" &
    PATRONI_PID=$!
    write_sy_conf() {  # write_sy_conf with_pool(0|1)
        cat >"$SY_CONF" <<EOF
listeners:
  - { name: rw, listen: "127.0.0.1:$SY_PORT", route: primary }
admin: { listen: "127.0.0.1:$SY_ADMIN" }
cluster:
  nodes:
    - { name: node1, host: 127.0.0.1, port: $PG_PORT, api: "http://127.0.0.1:$API_PORT" }
  health: { interval: 1s, timeout: 1s, rise: 2, fall: 3 }
users:
  - { name: bench, password: bench_pw }
EOF
        if [[ $CLIENT_TLS == 1 ]]; then
            printf 'tls: { mode: require, cert: %s, key: %s }\n' \
                "$TMP/pgbouncer/tls.pem" "$TMP/pgbouncer/tls.key" >>"$SY_CONF"
        fi
        [[ -z $SY_WORKERS ]] || printf 'runtime: { workers: %s }\n' "$SY_WORKERS" >>"$SY_CONF"
        if [[ $1 == 1 ]]; then
            cat >>"$SY_CONF" <<EOF
pool:
  mode: $SY_POOL_MODE        # transaction | session
  size: $POOL_SIZE
  max_client_connections: 10000
EOF
        fi
    }
    write_sy_conf "$SY_POOL"
    if ! "$SY_BIN" check --config "$SY_CONF" >"$TMP/logs/switchyard-check.log" 2>&1; then
        cat "$TMP/logs/switchyard-check.log" >&2
        if [[ $SY_POOL == 1 ]] && grep -qi 'pool' "$TMP/logs/switchyard-check.log"; then
            die "this switchyard build rejects the pool: block (pooling not there yet?); rerun with SY_POOL=0"
        fi
        die "switchyard check rejected the generated config"
    fi
    [[ $SY_POOL == 1 ]] && SY_POOL_USED="$SY_POOL_MODE, size $POOL_SIZE"
    SY_POOL_USED+="${SY_WORKERS:+; runtime.workers $SY_WORKERS}${BASELINE_BIN:+; baseline $(basename "$BASELINE_BIN")${BASELINE_WORKERS:+ with runtime.workers $BASELINE_WORKERS}}"
    if has_target switchyard; then
        log "switchyard on 127.0.0.1:$SY_PORT (admin $SY_ADMIN, fake Patroni $API_PORT, pool: $SY_POOL_USED)"
        start_switchyard
    fi
    if has_target baseline; then
        log "baseline $BASELINE_BIN on 127.0.0.1:$BL_PORT (admin $BL_ADMIN)"
        start_baseline
    fi
fi

# ---------------------------------------------------------------- PgBouncer
PGB_VERSION="" PGB_PREPARED=0
if command -v pgbouncer >/dev/null; then
    PGB_VERSION=$(pgbouncer --version 2>/dev/null | awk 'NR == 1 {print $2}')
    # Protocol-level prepared statements in transaction mode arrived in PgBouncer 1.21.
    if [[ -n $PGB_VERSION && $(printf '1.21.0\n%s\n' "$PGB_VERSION" | sort -V | head -1) == 1.21.0 ]]; then
        PGB_PREPARED=1
    fi
fi
start_pgbouncer() {
    local dir=$TMP/pgbouncer
    printf '"bench" "%s"\n' "$SCRAM_VERIFIER" >"$dir/userlist.txt"
    cat >"$dir/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 10000
ignore_startup_parameters = extra_float_digits
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF
    [[ $PGB_PREPARED == 1 ]] && echo "max_prepared_statements = 200" >>"$dir/pgbouncer.ini"
    if [[ $CLIENT_TLS == 1 ]]; then
        printf 'client_tls_sslmode = require\nclient_tls_cert_file = %s\nclient_tls_key_file = %s\n' \
            "$dir/tls.pem" "$dir/tls.key" >>"$dir/pgbouncer.ini"
    fi
    chown -R "$PG_OWNER" "$dir"
    chmod 600 "$dir/userlist.txt"
    rm -f "$dir/pgbouncer.pid"
    if [[ $EUID -eq 0 ]]; then pgbouncer -u postgres "$dir/pgbouncer.ini" 2>>"$TMP/logs/pgbouncer.stderr" &
    else pgbouncer "$dir/pgbouncer.ini" 2>>"$TMP/logs/pgbouncer.stderr" & fi
    PGB_PID=$!
    sleep 0.3
    alive "$PGB_PID" || { cat "$TMP/logs/pgbouncer.stderr" "$dir/pgbouncer.log" >&2 || true; die "pgbouncer exited"; }
    wait_sql "$PGB_PORT" pgbouncer "$PGB_PID" || { tail -20 "$dir/pgbouncer.log" >&2; die "cannot log in through pgbouncer"; }
}
stop_pgbouncer() { stop_pid "$PGB_PID" 10; PGB_PID=""; }
if has_target pgbouncer; then
    log "pgbouncer $PGB_VERSION on 127.0.0.1:$PGB_PORT (transaction pooling, prepared statements: $([[ $PGB_PREPARED == 1 ]] && echo yes || echo 'no, < 1.21'))"
    start_pgbouncer
fi

# ---------------------------------------------------------------- HAProxy
# HAProxy needs about 2 fds per connection and refuses to start when maxconn does not
# fit the fd limit (containers often cap it at 20000).
HAP_MAXCONN=$(( (FD_LIMIT - 100) / 2 < 20000 ? (FD_LIMIT - 100) / 2 : 20000 ))
if has_target haproxy; then
    cat >"$TMP/haproxy.cfg" <<EOF
global
    maxconn $HAP_MAXCONN

defaults
    mode tcp
    timeout connect 5s
    timeout client 30m
    timeout server 30m

listen pg
    bind 127.0.0.1:$HAP_PORT
    mode tcp
    balance first
    maxconn $HAP_MAXCONN
    server pg1 127.0.0.1:$PG_PORT
EOF
    haproxy -c -q -f "$TMP/haproxy.cfg" >&2 || die "haproxy rejected its config"
    log "haproxy on 127.0.0.1:$HAP_PORT (TCP, no pooling, maxconn $HAP_MAXCONN)"
    haproxy -db -f "$TMP/haproxy.cfg" >>"$TMP/logs/haproxy.log" 2>&1 &
    HAP_PID=$!
    wait_sql "$HAP_PORT" haproxy "$HAP_PID" || { tail -20 "$TMP/logs/haproxy.log" >&2; die "cannot log in through haproxy"; }
fi

# ---------------------------------------------------------------- tokio relay
if has_target tokio-relay; then
    log "tokio-relay on 127.0.0.1:$TR_PORT (bare tokio copy loop, no pooling)"
    "$TR_BIN" "127.0.0.1:$TR_PORT" "127.0.0.1:$PG_PORT" >>"$TMP/logs/tokio-relay.log" 2>&1 &
    TR_PID=$!
    wait_sql "$TR_PORT" tokio-relay "$TR_PID" || { tail -20 "$TMP/logs/tokio-relay.log" >&2; die "cannot log in through tokio-relay"; }
fi

target_pid() {  # the process whose connections to PostgreSQL are counted
    case $1 in direct) echo "${RUN_PIDS[*]}" ;; switchyard) echo "$SY_PID" ;; baseline) echo "$BL_PID" ;; pgbouncer) echo "$PGB_PID" ;; haproxy) echo "$HAP_PID" ;; tokio-relay) echo "$TR_PID" ;; esac
}
target_port() {
    case $1 in direct) echo "$PG_PORT" ;; switchyard) echo "$SY_PORT" ;; baseline) echo "$BL_PORT" ;; pgbouncer) echo "$PGB_PORT" ;; haproxy) echo "$HAP_PORT" ;; tokio-relay) echo "$TR_PORT" ;; esac
}

# ---------------------------------------------------------------- pgbench runs
RAW=$TMP/results.tsv
printf 'round\tworkload\ttarget\ttps\tfailed\trc\tpeak_server_conns\tnote\tproxy_cpu_us\n' >"$RAW"

workload_args() {
    case $1 in
        select) echo "-S -c 32 -j 2 -M simple" ;;
        prepared) echo "-S -c 32 -j 2 -M prepared" ;;
        c500) echo "-S -c 500 -j 2 -M simple" ;;
        connect) echo "-S -C -c 4 -j 1 -M simple" ;;
    esac
}

# pgbench processes per run, each with workload_args; their tps are summed. The
# connect workload uses two single-threaded processes rather than one with -j 2:
# libpq's SCRAM client proof (4,096 HMAC rounds, each setting up an OpenSSL context)
# slows down when two threads of one process run it at once, and pgbench itself
# became the limit (one process, -c 8 -j 2: ~125 logins/s through any proxy; the
# same 8 clients in two processes: ~200). Concurrency is unchanged: 8 clients, at
# most 2 logins in flight, as pgbench connects synchronously per thread.
workload_procs() {
    case $1 in
        connect) echo 2 ;;
        *) echo 1 ;;
    esac
}

# cpu_ticks PID: user + system CPU of a process so far, in clock ticks.
cpu_ticks() {
    [[ -n $1 && -r /proc/$1/stat ]] || { echo ""; return 0; }
    # Fields after the parenthesised command name; utime and stime are fields 14, 15.
    sed -E 's/^.*\) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
CLK_TCK=$(getconf CLK_TCK)

# run_pgbench ROUND WORKLOAD TARGET SECONDS [record=1]
run_pgbench() {
    local round=$1 workload=$2 target=$3 secs=$4 record=${5:-1}
    local port out args rc peak b tps failed note cpu_before cpu_after processed cpu_us="" procs p pid tls_conn
    port=$(target_port "$target")
    if [[ $target == pgbouncer && $workload == prepared && $PGB_PREPARED != 1 ]]; then
        ((record)) && printf '%s\t%s\t%s\t\t\t\t\t%s\t\n' "$round" "$workload" "$target" "n/a: PgBouncer $PGB_VERSION < 1.21 has no prepared statements in transaction mode" >>"$RAW"
        return 0
    fi
    out=$TMP/runs/r$round-$workload-$target.log
    args=$(workload_args "$workload")
    # shellcheck disable=SC2086
    # 500 SCRAM logins take seconds of the -T window; pgbench reports tps without them.
    [[ $workload == c500 ]] && secs=$((secs + C500_EXTRA))
    [[ $target == direct ]] || cpu_before=$(cpu_ticks "$(target_pid "$target")")
    procs=$(workload_procs "$workload")
    tls_conn=$TLS_CONN
    [[ $target == direct ]] && tls_conn=""
    RUN_PIDS=()
    for ((p = 1; p <= procs; p++)); do
        "$PGBENCH" -n $args -T "$secs" "host=127.0.0.1 port=$port user=bench dbname=bench$tls_conn" >"$out.$p" 2>&1 &
        RUN_PIDS+=($!)
    done
    peak=0
    while any_alive "${RUN_PIDS[@]}"; do
        sleep 1
        b=$(server_conns "$(target_pid "$target")")
        [[ $b =~ ^[0-9]+$ ]] && ((b > peak)) && peak=$b
    done
    rc=0
    for pid in "${RUN_PIDS[@]}"; do
        wait "$pid" || rc=$?
    done
    RUN_PIDS=()
    # One log per run: the processes' outputs one after the other.
    for ((p = 1; p <= procs; p++)); do
        ((procs == 1)) || echo "--- pgbench process $p of $procs"
        cat "$out.$p"
        rm -f "$out.$p"
    done >"$out"
    # The proxy's own CPU per transaction: steadier than TPS on a shared machine.
    if [[ $target != direct ]]; then
        cpu_after=$(cpu_ticks "$(target_pid "$target")")
        processed=$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' "$out" | awk '{ n += $1 } END { print n + 0 }')
        if [[ -n $cpu_before && -n $cpu_after && ${processed:-0} -gt 0 ]]; then
            cpu_us=$(awk -v t=$((cpu_after - cpu_before)) -v n="$processed" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }')
        fi
    fi
    ((record)) || { ((rc == 0)) || log "warm-up $workload/$target: pgbench exit $rc: $(grep -m1 -iE 'error|fatal|abort' "$out" || true)"; return 0; }
    # Summed over the processes; empty unless every process reported one.
    tps=$(sed -nE 's/^tps = ([0-9.]+) \((without initial connection time|including reconnection times)\).*/\1/p' "$out" \
        | awk -v want="$procs" '{ s += $1; n++ } END { if (n == want) printf "%.2f", s }')
    failed=$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' "$out" | awk '{ s += $1; n++ } END { if (n) print s }')
    note=""
    if ((rc != 0)) || [[ -z $tps ]] || [[ ${failed:-0} != 0 ]]; then
        note=$({ grep -iE 'error|fatal|abort|could not|failed|0 transactions' "$out" || true; } | { grep -v '^number of failed' || true; } | head -1 | tr '\t' ' ' | cut -c1-200)
        [[ -n $note || -n $tps ]] || note="no tps line: $(grep -m1 'actually processed' "$out" || echo 'see log')"
        log "  !! $workload/$target round $round: exit $rc, failed ${failed:-?}: ${note:-see $out}"
        mkdir -p "$ERR_DIR" && cp "$out" "$ERR_DIR/r$round-$workload-$target.log"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$workload" "$target" "$tps" "${failed:-}" "$rc" "$peak" "$note" "$cpu_us" >>"$RAW"
    log "  $workload/$target round $round: tps ${tps:-none}, failed ${failed:-?}, exit $rc, peak server connections $peak${cpu_us:+, proxy CPU ${cpu_us} us/transaction}"
}

mkdir -p "$(dirname "$RESULTS")"
ERR_DIR=${RESULTS%.md}-errors   # pgbench output of runs that failed
rm -rf "$ERR_DIR"

if ((WARMUP > 0)); then
    log "warm-up: ${WARMUP}s select-only per target"
    for t in "${TARGET_LIST[@]}"; do run_pgbench 0 select "$t" "$WARMUP" 0; done
fi

n=${#TARGET_LIST[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    order=()
    for ((i = 0; i < n; i++)); do order+=("${TARGET_LIST[$(((i + r - 1) % n))]}"); done
    log "round $r/$ROUNDS: ${order[*]}"
    for w in "${WORKLOAD_LIST[@]}"; do
        for t in "${order[@]}"; do
            run_pgbench "$r" "$w" "$t" "$DURATION"
            sleep 1
        done
    done
done

# ---------------------------------------------------------------- idle-client memory
IDLE=$TMP/idle.tsv
printf 'target\tclients\tok\tfailed\trss_before_kib\trss_after_kib\thwm_kib\tbackends\tseconds\terrors\n' >"$IDLE"

proc_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null; }

idle_test() {  # idle_test TARGET PID PORT
    local target=$1 pid=$2 port=$3 out before after hwm backends ready i errors
    out=$TMP/logs/idle-$target.out
    # one login first, so one-time setup (first server connection, ...) is not counted
    wait_sql "$port" "$target-idle" || log "idle test: warm-up login through $target failed"
    sleep 1
    before=$(proc_kib "$pid" VmRSS)
    "$PYTHON" "$BENCH_DIR/idle_clients.py" --host 127.0.0.1 --port "$port" --user bench \
        --password bench_pw --dbname bench --count "$IDLE_CLIENTS" >"$out" 2>>"$TMP/logs/idle-$target.err" &
    IDLE_PID=$!
    ready=""
    for ((i = 0; i < 3000; i++)); do
        ready=$(grep -m1 '^READY' "$out" || true)
        [[ -n $ready ]] && break
        alive "$IDLE_PID" || break
        sleep 0.1
    done
    if [[ -z $ready ]]; then
        log "idle test against $target: the client never got ready"; cat "$TMP/logs/idle-$target.err" >&2 || true
        stop_pid "$IDLE_PID" 5; IDLE_PID=""
        printf '%s\t%s\t0\t%s\t%s\t\t\t\t\tclient never got ready\n' "$target" "$IDLE_CLIENTS" "$IDLE_CLIENTS" "$before" >>"$IDLE"
        return 0
    fi
    sleep 3
    after=$(proc_kib "$pid" VmRSS)
    hwm=$(proc_kib "$pid" VmHWM)
    backends=$(server_conns "$pid")
    errors=$(grep '^ERROR' "$out" | sed 's/^ERROR //' | tr '\t\n' '  ' | cut -c1-300 || true)
    stop_pid "$IDLE_PID" 10; IDLE_PID=""
    local ok failed secs
    ok=$(sed -nE 's/.*ok=([0-9]+).*/\1/p' <<<"$ready")
    failed=$(sed -nE 's/.*failed=([0-9]+).*/\1/p' <<<"$ready")
    secs=$(sed -nE 's/.*seconds=([0-9.]+).*/\1/p' <<<"$ready")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$IDLE_CLIENTS" "$ok" "$failed" "$before" "$after" "$hwm" "$backends" "$secs" "$errors" >>"$IDLE"
    log "  idle $target: $ok ok, $failed failed in ${secs}s; RSS $before -> $after KiB (peak $hwm), server connections $backends"
    [[ -z $errors ]] || log "  idle $target errors: $errors"
}

if ((IDLE_CLIENTS > 0)); then
    if has_target switchyard; then
        log "idle-client memory: $IDLE_CLIENTS clients through a freshly restarted switchyard"
        stop_switchyard; start_switchyard
        idle_test switchyard "$SY_PID" "$SY_PORT"
    fi
    if has_target pgbouncer; then
        log "idle-client memory: $IDLE_CLIENTS clients through a freshly restarted pgbouncer"
        stop_pgbouncer; start_pgbouncer
        idle_test pgbouncer "$PGB_PID" "$PGB_PORT"
    fi
fi

# ---------------------------------------------------------------- report
sy_commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then sy_commit+="+uncommitted changes"; fi
export REPORT_CPU_MODEL REPORT_NPROC REPORT_MEM REPORT_KERNEL REPORT_PG REPORT_PGB REPORT_HAP REPORT_SY REPORT_PARAMS
REPORT_CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
REPORT_NPROC=$(nproc)
REPORT_MEM=$(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
REPORT_KERNEL=$(uname -r)
REPORT_PG=$("$PG_BIN/postgres" --version | awk 'NR == 1 {print $3}')
REPORT_PGB=${PGB_VERSION:-none}
REPORT_HAP=none
command -v haproxy >/dev/null && REPORT_HAP=$(haproxy -v 2>/dev/null | awk 'NR == 1 {print $3}')
REPORT_SY="$sy_commit, pool: $SY_POOL_USED"
REPORT_PARAMS="pgbench scale $SCALE, $ROUNDS round(s) x ${DURATION}s per workload and target (500 clients: +${C500_EXTRA}s for their logins), target order rotating each round; pool size $POOL_SIZE; fd limit $FD_LIMIT, HAProxy maxconn $HAP_MAXCONN"
[[ $QUICK == 1 ]] && REPORT_PARAMS+="; QUICK smoke-test mode, numbers not meaningful"
[[ $CLIENT_TLS == 1 ]] && REPORT_PARAMS+="; clients over TLS (sslmode=require) to Switchyard and PgBouncer, ECDSA P-256 certificate"

"$PYTHON" "$BENCH_DIR/report.py" --raw "$RAW" --idle "$IDLE" --targets "$TARGETS" \
    --workloads "$WORKLOADS" --idle-clients "$IDLE_CLIENTS" >"$RESULTS.tmp"
mv "$RESULTS.tmp" "$RESULTS"
RAW_OUT=${RESULTS%.md}.tsv
cp "$RAW" "$RAW_OUT"
echo
cat "$RESULTS"
echo
log "written to ${RESULTS#"$REPO"/} (numbers of every run: ${RAW_OUT#"$REPO"/})"
[[ -d $ERR_DIR ]] && log "pgbench output of the failed runs: ${ERR_DIR#"$REPO"/}/"
exit 0
