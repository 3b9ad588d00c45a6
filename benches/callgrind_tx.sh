#!/bin/bash
# Instructions per transaction in the proxy under callgrind (one tokio worker, so runs
# repeat within ~1%): a fresh PostgreSQL 15, transaction pooling (pool of 4),
# pgbench -S -M prepared -c 4: 800 warm-up transactions, then 8,000 counted.
# Needs valgrind, root (initdb runs as postgres) and a release binary.
# usage: benches/callgrind_tx.sh target/release/switchyard LABEL
set -e
BIN=$1; LABEL=$2
D=$(mktemp -d /tmp/callgrind-tx.XXXX); chown postgres $D; chmod 700 $D
B=/usr/lib/postgresql/15/bin
PGPORT=$((20000 + RANDOM % 20000)); PXPORT=$((PGPORT+1)); ADMIN=$((PGPORT+2))
runuser -u postgres -- $B/initdb -D $D/data -U postgres --auth=trust --no-sync >/dev/null
runuser -u postgres -- $B/pg_ctl -D $D/data -o "-p $PGPORT -k $D -c listen_addresses=127.0.0.1 -c fsync=off" -l $D/pg.log start -w >/dev/null
psql -h 127.0.0.1 -p $PGPORT -U postgres -qc "CREATE ROLE app LOGIN PASSWORD 'app_pw'" postgres
psql -h 127.0.0.1 -p $PGPORT -U postgres -qc "CREATE DATABASE appdb OWNER app" postgres
$B/pgbench -h 127.0.0.1 -p $PGPORT -U app -i -q appdb >/dev/null 2>&1
cat > $D/cfg.yaml <<YAML
listeners:
  - { name: rw, listen: "127.0.0.1:$PXPORT", route: primary }
admin: { listen: "127.0.0.1:$ADMIN" }
cluster:
  discovery: sql
  probe: { user: app, password: app_pw, database: appdb }
  health: { interval: 30s, timeout: 5s, rise: 1, fall: 3 }
  nodes:
    - { name: n1, host: 127.0.0.1, port: $PGPORT }
users:
  - { name: app, password: app_pw }
pool: { mode: transaction, size: 4 }
YAML
TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$D/cg.out $BIN run -c $D/cfg.yaml > $D/proxy.log 2>&1 &
VPID=$!
for i in $(seq 1 120); do PGPASSWORD=app_pw psql -h 127.0.0.1 -p $PXPORT -U app -Atqc "select 1" appdb >/dev/null 2>&1 && break; sleep 1; done
PGPASSWORD=app_pw $B/pgbench -n -S -M prepared -c 4 -t 200 -h 127.0.0.1 -p $PXPORT -U app appdb >/dev/null 2>&1
callgrind_control -i on $VPID >/dev/null
PGPASSWORD=app_pw $B/pgbench -n -S -M prepared -c 4 -t 2000 -h 127.0.0.1 -p $PXPORT -U app appdb > $D/bench.txt 2>&1
callgrind_control -i off $VPID >/dev/null
kill -TERM $VPID; wait $VPID || true
runuser -u postgres -- $B/pg_ctl -D $D/data stop -m fast >/dev/null
TOTAL=$(grep -E "^(summary|totals):" $D/cg.out | tail -1 | awk '{print $2}')
echo "$LABEL: $TOTAL instructions, $(grep 'processed' $D/bench.txt | head -1), per tx: $((TOTAL / 8000))"
grep -E "^(summary|totals):" $D/cg.out
cp $D/cg.out ./callgrind-$LABEL.out; rm -rf $D
