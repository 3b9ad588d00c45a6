#!/usr/bin/env bash
# Tests conf/validate-deploy.sh: it passes on the files as they are, and each
# check fails, with a message that names the problem, on a copy of the tree
# with one realistic mistake in it. Uses the validator's tool cache
# ($SWITCHYARD_DEPLOY_TOOLS) and $SWITCHYARD_BIN, or a debug build made here.
# The mutations are Python expressions: their $ signs are for the files, not
# for this shell, hence single quotes throughout.
# shellcheck disable=SC2016
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

export SWITCHYARD_DEPLOY_TOOLS=${SWITCHYARD_DEPLOY_TOOLS:-$root/target/deploy-tools}
if [[ -z ${SWITCHYARD_BIN:-} ]]; then
    cargo build --quiet --bin switchyard
    SWITCHYARD_BIN=$root/target/debug/switchyard
fi
export SWITCHYARD_BIN

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/base"
cp -a Cargo.toml Cargo.lock .dockerignore src conf docker "$work/base/"

passed=0
failed=0
pass() { echo "ok    $1"; passed=$((passed + 1)); }
fail() { echo "FAIL  $1"; printf '%s\n' "$2" | sed 's/^/      /'; failed=$((failed + 1)); }

# The unchanged files pass every check.
if out=$(bash "$work/base/conf/validate-deploy.sh" 2>&1); then
    pass "unchanged files pass"
else
    fail "unchanged files pass" "$out"
fi

# mutant NAME CHECK EXPECTED FILE PYTHON-EXPR: copies the tree, sets FILE's text
# to PYTHON-EXPR (over the variable s, the current text), runs CHECK and
# expects it to fail with EXPECTED in its output.
mutant() {
    local name=$1 check=$2 expected=$3 file=$4 edit=$5 out
    rm -rf "$work/t"
    cp -a "$work/base" "$work/t"
    python3 - "$work/t/$file" "$edit" <<'PY'
import sys
path, edit = sys.argv[1], sys.argv[2]
s = open(path).read()
new = eval(edit, {"s": s})
if new == s:
    sys.exit(f"mutation did not change {path}")
open(path, "w").write(new)
PY
    if out=$(bash "$work/t/conf/validate-deploy.sh" "$check" 2>&1); then
        fail "$name" "the $check check passed; expected it to fail with: $expected"
    elif [[ $out != *"$expected"* ]]; then
        fail "$name" "expected '$expected' in:"$'\n'"$out"
    else
        pass "$name"
    fi
}

mutant "shell: unquoted expansion" shell "SC2086" \
    docker/patroni/entrypoint.sh 's.replace("exec patroni \"${PATRONI_CONFIG:-/etc/patroni/patroni.yml}\"", "exec patroni ${PATRONI_CONFIG:-/etc/patroni/patroni.yml}")'
mutant "validator: Python syntax error" validator "SyntaxError" \
    conf/validate-deploy/checks.py 's.replace("def err(msg):", "def err(msg)")'
mutant "validator: JavaScript syntax error" validator "SyntaxError" \
    conf/validate-deploy/promql.cjs 's.replace("const errors = [];", "const errors = [;")'
mutant "yaml: duplicate key" yaml "duplication of key" \
    conf/prometheus/prometheus.yml 's.replace("  scrape_timeout: 4s\n", "  scrape_timeout: 4s\n  scrape_interval: 15s\n")'
mutant "systemd: misspelt directive" systemd "Unknown key" \
    conf/systemd/switchyard.service 's.replace("ProtectHome=yes", "ProtectHomes=yes")'
mutant "systemd: sandboxing dropped" systemd "Overall exposure" \
    conf/systemd/switchyard.service 's.replace("PrivateUsers=yes\n", "").replace("ProtectSystem=strict\n", "").replace("SystemCallFilter=~@privileged\n", "").replace("RestrictNamespaces=yes\n", "").replace("ProtectKernelTunables=yes\n", "").replace("PrivateDevices=yes\n", "")'
mutant "systemd: stop timeout below the drain" systemd "TimeoutStopSec must exceed" \
    conf/systemd/switchyard.service 's.replace("TimeoutStopSec=45s", "TimeoutStopSec=20s")'
mutant "prometheus: PromQL syntax error in a rule" prometheus "parse error" \
    conf/prometheus/alerts.yml 's.replace("> 16 * 1024 * 1024", "> > 16")'
mutant "alert-tests: NoPrimary fires too late" alert-tests "FAILED" \
    conf/prometheus/alerts.yml 's.replace("        for: 15s\n", "        for: 1m\n")'
mutant "alerts: severity missing" alerts "severity label" \
    conf/prometheus/alerts.yml 's.replace("          severity: info\n", "          team: dba\n")'
mutant "promql: unknown metric" promql "unknown metric switchyard_splitbrain" \
    conf/prometheus/alerts.yml 's.replace("expr: switchyard_split_brain == 1", "expr: switchyard_splitbrain == 1")'
mutant "promql: label the metric does not have" promql "switchyard_client_connections has no label status" \
    conf/grafana/switchyard-dashboard.json 's.replace("switchyard_client_connections{job=\\\"$job\\\"", "switchyard_client_connections{status=\\\"idle\\\", job=\\\"$job\\\"")'
mutant "promql: legend label aggregated away" promql "legend uses {{node}}" \
    conf/grafana/switchyard-dashboard.json 's.replace("\"legendFormat\": \"{{listener}} {{state}}\"", "\"legendFormat\": \"{{node}} {{state}}\"")'
mutant "promql: rate over a raw Grafana variable" promql "PromQL syntax error" \
    conf/grafana/switchyard-dashboard.json 's.replace("[$__rate_interval]", "[$window]", 1)'
mutant "promql: exported metric shown nowhere" promql "switchyard_pool_evictions_total: exported but used" \
    conf/prometheus/metric-names.txt 's + "switchyard_pool_evictions_total counter node\n"'
mutant "promql: metric list breaks the naming rules" promql "counters, and only counters, end in _total" \
    conf/prometheus/metric-names.txt 's.replace("switchyard_queries_total ", "switchyard_queries       ")'
mutant "grafana: key outside the schema" grafana "gridpos is not part of Grafana" \
    conf/grafana/switchyard-dashboard.json 's.replace("\"gridPos\"", "\"gridpos\"", 1)'
mutant "grafana: hard-coded datasource" grafana "datasource must be" \
    conf/grafana/switchyard-dashboard.json 's.replace("\"uid\": \"${datasource}\"", "\"uid\": \"P1809F7CD0C75ACF3\"", 3)'
mutant "dockerfile: unknown HEALTHCHECK flag" dockerfile "Unknown flag: intervall" \
    docker/Dockerfile 's.replace("HEALTHCHECK --interval", "HEALTHCHECK --intervall")'
mutant "dockerfile: unpinned base image" dockerfile "must carry a version tag" \
    docker/Dockerfile 's.replace("FROM debian:bookworm-slim", "FROM debian:latest")'
mutant "dockerfile: toolchain older than the dependencies" dockerfile "older than the rust-version" \
    docker/Dockerfile 's.replace("FROM rust:1.89-slim-bookworm", "FROM rust:1.85-slim-bookworm")'
mutant "dockerfile: COPY source ignored by .dockerignore" dockerfile "excluded by ./.dockerignore" \
    .dockerignore 's + "src/\n"'
mutant "dockerfile: runs as root" dockerfile "non-root USER" \
    docker/patroni/Dockerfile 's.replace("USER postgres\n", "")'
mutant "compose: misspelt key" compose "stop_grace_periodd" \
    docker/docker-compose.yml 's.replace("stop_grace_period: 45s", "stop_grace_periodd: 45s")'
mutant "compose: waits for a service without a healthcheck" compose "prometheus has no healthcheck" \
    docker/docker-compose.yml 's.replace("      switchyard1:\n        condition: service_started", "      switchyard1:\n        condition: service_started\n      prometheus:\n        condition: service_healthy", 1)'
mutant "compose: password without a default" compose "needs a default" \
    docker/docker-compose.yml 's.replace("${PATRONI_REWIND_PASSWORD:-rewind-demo}", "${PATRONI_REWIND_PASSWORD}")'
mutant "compose: proxy config names a node compose lacks" compose "host pg4" \
    docker/switchyard.yaml 's.replace("host: pg3, port: 5432, api: http://pg3:8008", "host: pg4, port: 5432, api: http://pg4:8008")'
mutant "compose: Prometheus scrapes a missing instance" compose "differ from the compose services" \
    conf/prometheus/prometheus.yml 's.replace("          - switchyard2:8080\n", "          - switchyard2:8080\n          - switchyard3:8080\n")'
mutant "compose: entrypoint variable not set" compose "PATRONI_REWIND_PASSWORD is required" \
    docker/docker-compose.yml 's.replace("  PATRONI_REWIND_PASSWORD: ${PATRONI_REWIND_PASSWORD:-rewind-demo}\n", "")'
mutant "patroni: wrong type in the DCS settings" patroni "loop_wait 5s is not" \
    docker/patroni/patroni.yml 's.replace("loop_wait: 5", "loop_wait: 5s")'
mutant "switchyard-config: unknown pool mode" switchyard-config "unknown variant" \
    docker/switchyard.yaml 's.replace("mode: transaction", "mode: transactions")'

echo "validate-deploy-test: $passed passed, $failed failed"
((failed == 0))
