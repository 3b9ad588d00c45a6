"""Shared by the driver case scripts (asyncpg_cases.py, psycopg_cases.py).

A script holds named cases; `python SCRIPT CASE` runs one of them and exits 0
(PASS), 1 (FAIL) or 3 (TIMEOUT); `python SCRIPT --list` prints the names. One case
per process, so a driver stuck inside libpq cannot take the other cases with it:
a watchdog thread prints which step was waiting and ends the process after
SY_CASE_TIMEOUT seconds (default 20). Besides the watchdog, every network wait
has its own driver timeout (connect_timeout, statement_timeout, asyncpg's
timeout/command_timeout).

Environment (set by tests/harness/python.rs):
  SY_HOST, SY_PORT       where the clients connect (the proxy, or PostgreSQL itself)
  SY_USER, SY_PASSWORD, SY_DBNAME
  SY_DIRECT_PORT         the PostgreSQL server itself, for side checks
  SY_LABEL               direct | session | transaction (for messages only)
"""

import asyncio
import inspect
import os
import sys
import threading
import traceback

HOST = os.environ.get("SY_HOST", "127.0.0.1")
PORT = int(os.environ.get("SY_PORT", "5432"))
USER = os.environ.get("SY_USER", "app")
PASSWORD = os.environ.get("SY_PASSWORD", "app_pw")
DBNAME = os.environ.get("SY_DBNAME", "appdb")
DIRECT_PORT = int(os.environ.get("SY_DIRECT_PORT", str(PORT)))
LABEL = os.environ.get("SY_LABEL", "?")
CASE_TIMEOUT = float(os.environ.get("SY_CASE_TIMEOUT", "20"))
# Per-operation timeouts given to the drivers (seconds).
OP_TIMEOUT = 10

_current_step = "starting"


def step(text):
    """Records (and prints) what the case is about to wait for."""
    global _current_step
    _current_step = text
    print(f"  .. {text}", flush=True)


def expect_eq(actual, expected, what):
    if actual != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")
    print(f"  ok {what} = {actual!r}", flush=True)


def expect_ne(actual, unwanted, what):
    if actual == unwanted:
        raise AssertionError(f"{what}: must not be {unwanted!r}, got {actual!r}")
    print(f"  ok {what} = {actual!r} (not {unwanted!r})", flush=True)


def libpq_dsn(port=None, **extra):
    """A libpq conninfo string with timeouts (psycopg2 and psycopg 3)."""
    parts = {
        "host": HOST,
        "port": port or PORT,
        "user": USER,
        "password": PASSWORD,
        "dbname": DBNAME,
        "connect_timeout": 5,
        "sslmode": "disable",
        # A server that answers but never finishes a query fails it; a proxy that
        # never answers is caught by the watchdog.
        "options": f"-c statement_timeout={OP_TIMEOUT * 1000}",
    }
    parts.update(extra)
    return " ".join(f"{k}='{v}'" for k, v in parts.items() if v is not None)


def direct_dsn(**extra):
    """Conninfo of the PostgreSQL server itself (for side checks)."""
    return libpq_dsn(port=DIRECT_PORT, **extra)


def _on_timeout(case):
    print(
        f"TIMEOUT [{LABEL}] {case}: no result within {CASE_TIMEOUT:g} s; "
        f"it was waiting for: {_current_step}",
        flush=True,
    )
    os._exit(3)


def main(cases):
    """Runs the case named in argv[1] (see the module doc)."""
    if len(sys.argv) != 2 or sys.argv[1] == "--list":
        print("\n".join(cases))
        sys.exit(0 if len(sys.argv) == 2 else 2)
    name = sys.argv[1]
    if name not in cases:
        print(f"unknown case {name!r}; cases: {', '.join(cases)}")
        sys.exit(2)
    watchdog = threading.Timer(CASE_TIMEOUT, _on_timeout, args=(name,))
    watchdog.daemon = True
    watchdog.start()
    print(f"[{LABEL}] {name} ({HOST}:{PORT} as {USER})", flush=True)
    try:
        fn = cases[name]
        if inspect.iscoroutinefunction(fn):
            asyncio.run(asyncio.wait_for(fn(), CASE_TIMEOUT))
        else:
            fn()
    except asyncio.TimeoutError:
        print(f"TIMEOUT [{LABEL}] {name}: it was waiting for: {_current_step}", flush=True)
        traceback.print_exc()
        sys.stdout.flush()
        os._exit(3)
    except Exception as e:  # noqa: BLE001 - any failure of the case is its result
        print(f"FAIL [{LABEL}] {name}: {type(e).__name__}: {e} (last step: {_current_step})", flush=True)
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    print(f"PASS [{LABEL}] {name}", flush=True)
    sys.stdout.flush()
    os._exit(0)
