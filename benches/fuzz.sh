#!/usr/bin/env bash
# Runs every fuzz target of src/fuzz.rs for many inputs in a release build and
# reports executions per target and any crash (a panic prints the target and the
# seed that reproduces it; add that seed to REGRESSIONS in src/fuzz.rs).
#   benches/fuzz.sh [iterations per target, default 10000000]
set -euo pipefail
cd "$(dirname "$0")/.."
iterations="${1:-10000000}"
echo "fuzz: ${iterations} inputs per target (release build)"
start=$(date +%s)
if FUZZ_ITERATIONS="$iterations" cargo test --release --lib fuzz:: -- --test-threads=2 2>&1 |
    tee target/fuzz.log | grep -E '^test fuzz::|panicked|test result'; then
    :
fi
elapsed=$(( $(date +%s) - start ))
crashes=$(grep -c 'panicked at seed' target/fuzz.log || true)
targets=$(grep -c '^test fuzz::' target/fuzz.log || true)
echo "fuzz: ${targets} targets x ${iterations} inputs in ${elapsed}s, crashes: ${crashes}"
[ "$crashes" -eq 0 ] && grep -q 'test result: ok' target/fuzz.log
