#!/usr/bin/env bash
# Creates (or reuses) the Python venv of the driver tests and prints its python.
#
#   bash tests/python/ensure_venv.sh [VENV_DIR]     (default: target/pyenv)
#
# The venv is built from tests/python/requirements.txt with `python3 -m venv`
# ($SWITCHYARD_PYTHON overrides the interpreter) and stamped with the hash of the
# requirements and the interpreter version; it is rebuilt only when those change.
# Several test binaries may call this at once: an exclusive flock on
# VENV_DIR.lock serialises them, and the stamp is written last, so a half-built
# venv is never taken for a finished one.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${1:-$root/target/pyenv}"
python="${SWITCHYARD_PYTHON:-python3}"
requirements="$here/requirements.txt"

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock -w 600 9 || { echo "ensure_venv: could not lock $venv.lock within 600 s" >&2; exit 1; }

want="$( { sha256sum <"$requirements"; "$python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
if [[ -x "$venv/bin/python" && -f "$venv/.stamp" && "$(cat "$venv/.stamp")" == "$want" ]]; then
    echo "$venv/bin/python"
    exit 0
fi

echo "ensure_venv: building $venv from $requirements" >&2
rm -rf "$venv"
"$python" -m venv "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --timeout 60 -r "$requirements" >&2
"$venv/bin/python" -c 'import asyncpg, psycopg2, psycopg, psycopg_pool' >&2
echo "$want" >"$venv/.stamp"
echo "$venv/bin/python"
