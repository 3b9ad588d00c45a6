#!/usr/bin/env bash
# Validates the deployment files without a Docker daemon, a systemd manager or
# a running Prometheus: the systemd unit, the Prometheus config, alerting rules
# and their unit tests, the Grafana dashboard, the Dockerfiles, the compose demo
# with its Patroni and Switchyard configs, and the metric names all of them use
# (conf/prometheus/metric-names.txt).
#
#   bash conf/validate-deploy.sh            every check
#   bash conf/validate-deploy.sh promql     only the named checks (--list: names)
#
# Tools are installed once into $SWITCHYARD_DEPLOY_TOOLS (default
# target/deploy-tools): a Python venv and an npm prefix with pinned versions;
# Debian packages (promtool, shellcheck, systemd-analyze, Patroni, PostgreSQL's
# binaries for Patroni's bin_dir check) with apt-get when missing, as root.
# `switchyard check` runs $SWITCHYARD_BIN, or a debug build made here.
# This script is the driver: it installs the tools and runs the checks. Their
# Python and JavaScript halves are conf/validate-deploy/checks.py and
# conf/validate-deploy/promql.cjs.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

tools=${SWITCHYARD_DEPLOY_TOOLS:-$root/target/deploy-tools}
venv=$tools/venv
npm_prefix=$tools/npm
py=$venv/bin/python

py_packages=(
    check-jsonschema==0.39.0             # JSON-schema validation; ships the compose-spec schema
    yamllint==1.38.0                     # YAML syntax and style
    PyYAML==6.0.3                        # checks.py reads YAML with it
    dockerfile==3.4.0                    # BuildKit's own Dockerfile parser (Go, as a wheel)
    'grafana-foundation-sdk==1769699379!11.6.0'  # Grafana 11.6 dashboard schema types
)
npm_packages=(
    @prometheus-io/lezer-promql@0.315.0  # the PromQL grammar of Prometheus' own UI
    @lezer/lr@1.4.12
    dockerfile-utils@0.16.3              # Dockerfile linter (instructions, flags, arguments)
)
apt_packages=(prometheus shellcheck systemd patroni postgresql-15)

checks=(shell validator yaml systemd prometheus alert-tests alerts promql grafana dockerfile compose patroni switchyard-config)

unit=conf/systemd/switchyard.service
prom_dir=conf/prometheus
compose=docker/docker-compose.yml

# ---------------------------------------------------------------- tools ------

install_apt_packages() {
    local missing=() package
    for package in "${apt_packages[@]}"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    ((${#missing[@]})) || return 0
    if ((EUID != 0)); then
        echo "validate-deploy: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
        exit 2
    fi
    echo "validate-deploy: installing ${missing[*]}"
    # The prometheus package would start its daemon on :9090 where nothing
    # forbids it; only its promtool is wanted here.
    local guard=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        guard=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$guard"
        chmod +x "$guard"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [[ -z $guard ]] || rm -f "$guard"
}

install_tools() {
    install_apt_packages
    local stamp=$tools/installed
    local want
    want=$(printf '%s\n' "${py_packages[@]}" "${npm_packages[@]}")
    if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
        return 0
    fi
    echo "validate-deploy: installing tools into $tools"
    rm -rf "$venv" "$npm_prefix"
    mkdir -p "$tools"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${py_packages[@]}"
    npm install --prefix "$npm_prefix" --no-audit --no-fund --no-save --loglevel=error \
        "${npm_packages[@]}" >/dev/null
    printf '%s\n' "$want" >"$stamp"
}

print_versions() {
    echo "validate-deploy: tools:" \
        "$(promtool --version 2>&1 | head -n1 | cut -d' ' -f1-3)," \
        "shellcheck $(shellcheck --version | sed -n 's/^version: //p')," \
        "$(systemd-analyze --version | head -n1)," \
        "patroni $(patroni --version | awk '{print $2}')," \
        "check-jsonschema $("$venv/bin/check-jsonschema" --version | awk '{print $NF}')," \
        "yamllint $("$venv/bin/yamllint" --version | awk '{print $2}')," \
        "dockerfile-utils $(node -p "require('$npm_prefix/node_modules/dockerfile-utils/package.json').version")," \
        "lezer-promql $(node -p "require('$npm_prefix/node_modules/@prometheus-io/lezer-promql/package.json').version")"
}

# ---------------------------------------------------------------- helpers ----

# The programs the checks below run (each file says what it owns):
# checks.py, the Python half (YAML/JSON walking, Dockerfile policy, compose
# semantics), and promql.cjs, the Node half (PromQL parsing, metric names).
programs=conf/validate-deploy
checks_py() { "$py" "$programs/checks.py" "$@"; }

# ---------------------------------------------------------------- checks -----

check_shell() {
    shellcheck --severity=style conf/validate-deploy.sh conf/validate-deploy-test.sh docker/patroni/*.sh
}

check_validator() {
    # The validator's own programs parse, with the interpreters that run them
    # (bytecode goes to the tools directory, not next to checks.py).
    PYTHONPYCACHEPREFIX=$tools/pycache "$py" -m py_compile "$programs/checks.py" &&
        node --check "$programs/promql.cjs"
}

check_yaml() {
    "$venv/bin/yamllint" --strict -d '{
        extends: default,
        rules: {
          document-start: disable,
          line-length: disable,
          braces: {max-spaces-inside: 1},
          truthy: {allowed-values: ["true", "false"], check-keys: true}
        }}' \
        "$prom_dir"/*.yml docker/docker-compose.yml docker/switchyard.yaml docker/patroni/patroni.yml
}

check_systemd() {
    # verify needs the unit's binaries and the stock units (sysinit.target,
    # network-online.target) under one root: a scratch root with stubs.
    local fake status=0 out exe
    fake=$(mktemp -d)
    mkdir -p "$fake/etc/systemd/system" "$fake/usr/lib/systemd"
    cp -a /usr/lib/systemd/system "$fake/usr/lib/systemd/"
    cp "$unit" "$fake/etc/systemd/system/"
    while read -r exe; do
        mkdir -p "$fake$(dirname "$exe")"
        printf '#!/bin/sh\n' >"$fake$exe"
        chmod +x "$fake$exe"
    done < <(sed -n 's/^Exec[A-Za-z]*=[-@:+!]*\([^ ]*\).*/\1/p' "$unit" | sort -u)
    out=$(systemd-analyze verify --root="$fake" switchyard.service 2>&1) || status=1
    if [[ -n $out ]]; then
        echo "$out"
        status=1
    fi
    # Exposure 2.0 or lower ("OK" in systemd's words): fails when a sandboxing
    # line is dropped.
    if ! out=$(systemd-analyze security --offline=true --root="$fake" --threshold=20 switchyard.service 2>&1); then
        echo "$out" | tail -n 3
        status=1
    fi
    rm -rf "$fake"
    # What the proxy's behaviour depends on (see the comments in the unit).
    local line
    # shellcheck disable=SC2016  # $MAINPID is for systemd, not this shell
    for line in \
        'User=switchyard' 'Group=switchyard' \
        'ExecStart=/usr/local/bin/switchyard run --config /etc/switchyard/switchyard.yaml' \
        'ExecStartPre=/usr/local/bin/switchyard check --config /etc/switchyard/switchyard.yaml' \
        'ExecReload=/bin/kill -HUP $MAINPID' 'KillSignal=SIGTERM' 'Restart=on-failure' \
        'EnvironmentFile=-/etc/switchyard/env' 'CapabilityBoundingSet=' 'NoNewPrivileges=yes' \
        'ProtectSystem=strict' 'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX' \
        'SystemCallFilter=@system-service' 'MemoryDenyWriteExecute=yes'; do
        grep -qxF "$line" "$unit" || { echo "  $unit: missing '$line'"; status=1; }
    done
    local stop nofile
    stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s\{0,1\}$/\1/p' "$unit")
    ((${stop:-0} > 30)) || { echo "  $unit: TimeoutStopSec must exceed shutdown_timeout (30s)"; status=1; }
    nofile=$(sed -n 's/^LimitNOFILE=\([0-9]*\)$/\1/p' "$unit")
    ((${nofile:-0} >= 65536)) || { echo "  $unit: LimitNOFILE must be 65536 or more"; status=1; }
    return $status
}

check_prometheus() {
    (cd "$prom_dir" && promtool check config prometheus.yml)
}

check_alert_tests() {
    (cd "$prom_dir" && promtool test rules alerts.test.yml)
}

check_alerts() {
    checks_py alerts
}

check_promql() {
    local exprs rules status=0
    exprs=$(checks_py exprs)
    NODE_PATH=$npm_prefix/node_modules node "$programs/promql.cjs" <<<"$exprs" || status=1
    rules=$(mktemp --suffix=.yml)
    checks_py dashboard-rules <<<"$exprs" >"$rules"
    promtool check rules "$rules" >/dev/null || { promtool check rules "$rules"; status=1; }
    rm -f "$rules"
    return $status
}

check_grafana() {
    checks_py grafana
}

check_dockerfile() {
    local status=0 f rust
    for f in docker/Dockerfile docker/patroni/Dockerfile; do
        node "$npm_prefix/node_modules/dockerfile-utils/bin/dockerfile-utils" lint "$f" || status=1
    done
    # Only what builds for this platform counts: Windows-only crates in the lock
    # file may ask for a newer toolchain than any Linux build needs.
    rust=$(cargo metadata --format-version 1 --locked --quiet --filter-platform "$(rustc -vV | sed -n "s/^host: //p")" | checks_py rust-version)
    checks_py dockerfile "$rust" || status=1
    return $status
}

check_compose() {
    "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$compose" || return 1
    checks_py compose
}

check_patroni() {
    # Patroni's own validator, with the environment compose gives pg1. The
    # etcd host only resolves inside compose, so a loopback address stands in;
    # two findings are expected and dropped: that nothing listens there, and
    # that Patroni 3.0's validator wants bootstrap.pg_hba, which Patroni
    # ignores when postgresql.pg_hba (used here) is set.
    local out rest env_pg1
    mapfile -t env_pg1 < <(checks_py patroni-env pg1)
    out=$(cd docker/patroni && env "${env_pg1[@]}" PATRONI_ETCD3_HOSTS=127.0.0.1:2379 \
        PATRONI_RESTAPI_CONNECT_ADDRESS=pg1:8008 PATRONI_POSTGRESQL_CONNECT_ADDRESS=pg1:5432 \
        patroni --validate-config patroni.yml 2>&1) || true
    rest=$(grep -vxF -e 'bootstrap.pg_hba  is not defined.' \
        -e "etcd3.hosts.0 127.0.0.1:2379 didn't pass validation: '127.0.0.1:2379 is not reachable'" <<<"$out" || true)
    if [[ -n $rest ]]; then
        echo "$rest"
        return 1
    fi
}

check_switchyard_config() {
    local bin=${SWITCHYARD_BIN:-}
    if [[ -z $bin ]]; then
        cargo build --quiet --bin switchyard
        bin=target/debug/switchyard
    fi
    SWITCHYARD_APP_PASSWORD=validate "$bin" check --config docker/switchyard.yaml >/dev/null
}

# ---------------------------------------------------------------- main -------

if [[ ${1:-} == --list ]]; then
    printf '%s\n' "${checks[@]}"
    exit 0
fi
selected=("$@")
((${#selected[@]})) || selected=("${checks[@]}")
for name in "${selected[@]}"; do
    [[ " ${checks[*]} " == *" $name "* ]] || { echo "validate-deploy: no check named $name (--list)" >&2; exit 2; }
done

install_tools
print_versions
passed=0
failed=0
for name in "${selected[@]}"; do
    if output=$("check_${name//-/_}" 2>&1); then
        echo "ok    $name"
        passed=$((passed + 1))
    else
        echo "FAIL  $name"
        printf '%s\n' "$output" | sed 's/^/      /'
        failed=$((failed + 1))
    fi
done
echo "validate-deploy: $passed passed, $failed failed"
((failed == 0))
