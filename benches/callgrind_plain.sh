#!/usr/bin/env bash
# Instructions per transaction of a switchyard binary on the plaintext path, by
# valgrind's callgrind (deterministic, unlike TPS on a shared machine): a fresh
# PostgreSQL 15 (trust auth, pgbench scale 1), the proxy in transaction mode with
# SQL discovery, `pgbench -S -M prepared -c 4`: 800 transactions of warm-up, the
# counters zeroed, then 8,000 measured. Prints callgrind's total for them.
#
#   bash benches/callgrind_plain.sh target/release/switchyard now [session]
#
# A third argument `session` runs the proxy in session mode (the relay path)
# instead of transaction mode.
#
# Runs as root (PostgreSQL as the postgres user); work files in /tmp/sy-callgrind.
set -euo pipefail
BIN=$(realpath "$1"); LABEL=$2; MODE=${3:-transaction}; SY=
PGB=/usr/lib/postgresql/15/bin
T=/tmp/sy-callgrind/$LABEL
rm -rf "$T"; mkdir -p "$T"; chown postgres "$T" "$(dirname "$T")"
PGPORT=$((20000 + RANDOM % 10000)); SYPORT=$((PGPORT+1)); ADMIN=$((PGPORT+2))
runuser -u postgres -- $PGB/initdb -D "$T/data" -U postgres -A trust >/dev/null
runuser -u postgres -- $PGB/pg_ctl -D "$T/data" -o "-p $PGPORT -k $T -c listen_addresses=127.0.0.1" -l "$T/pg.log" -w start >/dev/null
trap 'runuser -u postgres -- $PGB/pg_ctl -D "$T/data" -m immediate stop >/dev/null 2>&1 || true; [ -n "$SY" ] && kill "$SY" 2>/dev/null || true' EXIT
psql -h 127.0.0.1 -p $PGPORT -U postgres -qc "CREATE ROLE bench LOGIN PASSWORD 'bench_pw' SUPERUSER" postgres
psql -h 127.0.0.1 -p $PGPORT -U postgres -qc "CREATE DATABASE bench OWNER bench" postgres
PGPASSWORD=bench_pw $PGB/pgbench -h 127.0.0.1 -p $PGPORT -U bench -i -s 1 -q bench >/dev/null 2>&1
cat > "$T/sy.yaml" <<YAML
listeners:
  - { name: rw, listen: "127.0.0.1:$SYPORT", route: primary }
admin: { listen: "127.0.0.1:$ADMIN" }
cluster:
  discovery: sql
  probe: { user: bench, password: bench_pw, database: bench, require_auth: none }
  nodes: [ { name: n1, host: 127.0.0.1, port: $PGPORT } ]
users: [ { name: bench, password: bench_pw, require_auth: none } ]
pool: { mode: $MODE, size: 4 }
log: { level: warn }
YAML
valgrind --tool=callgrind --callgrind-out-file="$T/cg.out" "$BIN" run --config "$T/sy.yaml" 2>"$T/vg.log" &
SY=$!
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$ADMIN/health" >/dev/null 2>&1 && break; sleep 1; done
PGPASSWORD=bench_pw $PGB/pgbench -h 127.0.0.1 -p $SYPORT -U bench -S -M prepared -c 4 -t 200 bench >/dev/null 2>&1
callgrind_control -z $SY >/dev/null
PGPASSWORD=bench_pw $PGB/pgbench -h 127.0.0.1 -p $SYPORT -U bench -S -M prepared -c 4 -t 2000 bench 2>&1 | grep -E "processed|tps" | head -2
callgrind_control -d $SY >/dev/null
sleep 2
for f in "$T"/cg.out*; do
  [ -s "$f" ] || continue
  echo "$f: $(grep -E '^(summary|totals):' "$f" | head -1)"
done
