"""psycopg2 and psycopg 3 through Switchyard: session state that must not leak
from one client to another on a shared server (issue #13 item 2), and settings
changed inside transactions in the drivers' default (non-autocommit) mode
(issue #19). Run one case: `python psycopg_cases.py CASE` (environment: see
sy_cases.py). Case names start with the driver (`pg2_` psycopg2, `pg3_`
psycopg 3); `leak_` cases use two autocommit clients A and B, meant for a
transaction pool of size 1 so both share one server; `tx_` cases use a client A in
the default transaction mode and a client B whose transactions move A between the
servers of a pool of size 2; `pool_configure` uses psycopg_pool;
`pg2_own_backend_pid` checks the backend pid a session-mode client is given, and
`pg3_libpq18_latest_protocol` libpq 18 asking for protocol 3.2 (issue #14)."""

import os
import threading

import psycopg
import psycopg2
import psycopg_pool

from sy_cases import (USER, direct_dsn, expect_eq, expect_ne, libpq_dsn, main,
                      step)

UNIQUE = os.getpid()


class Client:
    """One connection of either driver, with the few calls the cases need."""

    def __init__(self, driver, name, autocommit, port=None, options=None, **conninfo):
        self.driver = driver
        self.name = name
        step(f"{name}: connecting ({driver}, autocommit={autocommit}, options={options!r}, "
             f"{conninfo})")
        if options is not None:
            conninfo["options"] = options
        dsn = libpq_dsn(port=port, **conninfo)
        if driver == "psycopg2":
            self.conn = psycopg2.connect(dsn)
            self.conn.autocommit = autocommit
        else:
            self.conn = psycopg.connect(dsn, autocommit=autocommit)

    def execute(self, sql, params=None):
        """Runs a statement; psycopg 3 uses the extended protocol with the unnamed
        statement (never a named server-side one)."""
        step(f"{self.name}: {sql} {params or ''}".rstrip())
        if self.driver == "psycopg2":
            with self.conn.cursor() as cur:
                cur.execute(sql, params)
        else:
            self.conn.execute(sql, params, prepare=False)

    def value(self, sql, params=None):
        """First column of the first row."""
        step(f"{self.name}: {sql} {params or ''}".rstrip())
        if self.driver == "psycopg2":
            with self.conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchone()[0]
        return self.conn.execute(sql, params, prepare=False).fetchone()[0]

    def parameter_status(self, name):
        """What the server (or proxy) reported in ParameterStatus."""
        if self.driver == "psycopg2":
            return self.conn.get_parameter_status(name)
        return self.conn.info.parameter_status(name)

    def commit(self):
        step(f"{self.name}: commit")
        self.conn.commit()

    def rollback(self):
        step(f"{self.name}: rollback")
        self.conn.rollback()

    def close(self):
        self.conn.close()


def direct_value(sql, params=None):
    """A query on a fresh connection straight to PostgreSQL (side checks)."""
    step(f"direct check: {sql} {params or ''}".rstrip())
    with psycopg.connect(direct_dsn(), autocommit=True) as conn:
        return conn.execute(sql, params).fetchone()[0]


# ---------------------------------------------------------------------------
# Leaks between autocommit clients sharing a server (pool size 1)
# ---------------------------------------------------------------------------

def leak_set_role(driver):
    a = Client(driver, "A", True)
    b = Client(driver, "B", True)
    a.execute("SET ROLE tenant_a")
    expect_eq(a.value("select current_user"), "tenant_a", "A's current_user after SET ROLE")
    expect_eq(b.value("select current_user"), USER, "B's current_user while A has SET ROLE")
    print(f"  note: A's current_user afterwards: {a.value('select current_user')!r}", flush=True)


def leak_reset_all_keeps_role(driver):
    # RESET ALL does not reset the role (role is GUC_NO_RESET_ALL): A is still
    # tenant_a afterwards, and a pooler that takes RESET ALL for a clean session
    # would hand that role to B.
    a = Client(driver, "A", True)
    b = Client(driver, "B", True)
    a.execute("SET role TO tenant_a")
    a.execute("RESET ALL")
    expect_ne(b.value("select current_user"), "tenant_a", "B's current_user after A's SET role; RESET ALL")
    print(f"  note: A's current_user afterwards: {a.value('select current_user')!r}", flush=True)


def leak_set_config(driver):
    a = Client(driver, "A", True)
    b = Client(driver, "B", True)
    expect_eq(a.value("select set_config(%s, %s, false)", ("app.tenant_id", "42")), "42",
              "A's set_config('app.tenant_id', '42', false)")
    expect_ne(b.value("select current_setting(%s, true)", ("app.tenant_id",)), "42",
              "B's current_setting('app.tenant_id', true)")


def leak_temp_table(driver):
    a = Client(driver, "A", True)
    b = Client(driver, "B", True)
    # In transaction mode a temp table lasts only for the transaction that made it
    # (the server is reset before reuse), so A does not use it again here.
    a.execute(f"create temp table sy_tmp_{UNIQUE}(x int)")
    expect_eq(b.value("select to_regclass(%s) is not null", (f"sy_tmp_{UNIQUE}",)), False,
              "B sees A's temp table")


def leak_advisory_lock(driver):
    key = UNIQUE
    a = Client(driver, "A", True)
    b = Client(driver, "B", True)
    expect_eq(a.value("select pg_advisory_lock(%s::bigint)::text", (key,)), "", f"A: pg_advisory_lock({key})")
    a_pid = a.value("select pg_backend_pid()")
    b_pid = b.value("select pg_backend_pid()")
    held_by_b = direct_value(
        "select count(*) from pg_locks where locktype = 'advisory' and granted "
        "and classid = 0 and objid = %s and objsubid = 1 and pid = %s", (key, b_pid))
    print(f"  note: A's server pid {a_pid}, B's server pid {b_pid}", flush=True)
    expect_eq(held_by_b, 0, f"advisory locks {key} held by B's server (pid {b_pid}), which B never took")


# ---------------------------------------------------------------------------
# Issue #19: SET inside transactions, default (non-autocommit) mode, pool size 2
# ---------------------------------------------------------------------------

SETTINGS = {
    # name: (SET statement, query reading it back, value it sets)
    "search_path": ("set search_path to foo, public", "show search_path", "foo, public"),
    "timezone": ("set timezone to 'Asia/Tokyo'", "show timezone", "Asia/Tokyo"),
    "statement_timeout": ("set statement_timeout to '7s'", "show statement_timeout", "7s"),
    "custom": ("set app.x to 'hello'", "select current_setting('app.x', true)", "hello"),
    "application_name": ("set application_name to 'sy_issue19'", "show application_name", "sy_issue19"),
}


def read_in_own_transaction(client, query):
    """Reads a value in a transaction of its own, then ends it (so the client
    gives its server back in transaction mode)."""
    value = client.value(query)
    pid = client.value("select pg_backend_pid()")
    client.commit()
    return value, pid


def across_rotations(a, b, query, want, unwanted_in_b, what, rounds=3):
    """Checks A reads `want` while B's transactions take servers from the pool,
    and that B never reads A's value."""
    pids = set()
    for r in range(1, rounds + 1):
        # B opens a transaction and keeps it: it holds the server A just gave
        # back (or another), so A's next transaction may run on a different one.
        b_value = b.value(query)
        expect_ne(b_value, unwanted_in_b, f"round {r}: B's {query!r} while it holds a server")
        value, pid = read_in_own_transaction(a, query)
        pids.add(pid)
        expect_eq(value, want, f"round {r}: A's {query!r} ({what}) while B holds a server")
        b.commit()
        value, pid = read_in_own_transaction(a, query)
        pids.add(pid)
        expect_eq(value, want, f"round {r}: A's {query!r} ({what}) after B released")
    print(f"  note: A's transactions ran on server pids {sorted(pids)}", flush=True)


def tx_clients(driver):
    return Client(driver, "A", False), Client(driver, "B", False)


def tx_committed(driver, name):
    statement, query, value = SETTINGS[name]
    a, b = tx_clients(driver)
    a.execute(statement)
    a.commit()
    across_rotations(a, b, query, value, value, f"{statement}; commit")


def default_search_path():
    return direct_value("show search_path")


def tx_rollback_discards(driver):
    default = default_search_path()
    a, b = tx_clients(driver)
    a.execute("set search_path to rolled_back, public")
    expect_eq(a.value("show search_path"), "rolled_back, public", "inside the transaction")
    a.rollback()
    across_rotations(a, b, "show search_path", default, "rolled_back, public", "SET then rollback")


def tx_savepoint_rollback(driver):
    a, b = tx_clients(driver)
    a.execute("set search_path to outer_sp, public")
    a.execute("savepoint s")
    a.execute("set search_path to inner_sp, public")
    a.execute("rollback to savepoint s")
    expect_eq(a.value("show search_path"), "outer_sp, public", "after rollback to savepoint")
    a.commit()
    across_rotations(a, b, "show search_path", "outer_sp, public", "outer_sp, public",
                     "SET; SAVEPOINT; SET; ROLLBACK TO SAVEPOINT; COMMIT")


def tx_set_local(driver):
    default = default_search_path()
    a, b = tx_clients(driver)
    a.execute("set local search_path to local_sp, public")
    expect_eq(a.value("show search_path"), "local_sp, public", "inside the transaction")
    a.commit()
    across_rotations(a, b, "show search_path", default, "local_sp, public", "SET LOCAL; commit")


def tx_failed_transaction(driver):
    default = default_search_path()
    a, b = tx_clients(driver)
    a.execute("set search_path to failed_sp, public")
    try:
        a.value("select 1 / 0")
        raise AssertionError("select 1 / 0 did not fail")
    except (psycopg2.errors.DivisionByZero, psycopg.errors.DivisionByZero):
        pass
    a.rollback()
    across_rotations(a, b, "show search_path", default, "failed_sp, public",
                     "SET; failing statement; rollback")


# ---------------------------------------------------------------------------
# Startup parameters: what the client is told matches its session
# ---------------------------------------------------------------------------

STARTUP_OPTIONS = {
    "standard_conforming_strings": "off",
    "DateStyle": "ISO, DMY",
    "TimeZone": "Asia/Tokyo",
    "IntervalStyle": "sql_standard",
}


def startup_options_reported(driver):
    """A client that sets parameters with the startup packet's `options` is told
    (ParameterStatus) the values its session really has. Drivers act on these:
    psycopg2 escapes strings by standard_conforming_strings, parses dates by
    DateStyle, intervals by IntervalStyle."""
    options = " ".join(f"-c {k}={v.replace(' ', '')}" for k, v in STARTUP_OPTIONS.items())
    # A first client with the opposite options makes the pool's first server
    # login, whose parameters the proxy greets later clients with (psycopg2's
    # test_scs does this).
    first = Client(driver, "first", True, options="-c standard_conforming_strings=on")
    first.value("select 1")
    a = Client(driver, "A", True, options=f"-c statement_timeout=10000 {options}")
    # As greeted, before any query (psycopg2 reads standard_conforming_strings once,
    # at connect, to choose its string escaping).
    greeted = {name: a.parameter_status(name) for name in STARTUP_OPTIONS}
    for name, value in STARTUP_OPTIONS.items():
        actual = a.value(f"show {name}")
        expect_eq(actual, value, f"the session's {name} (SHOW)")
        expect_eq(greeted[name], actual, f"ParameterStatus {name} the client was greeted with")
        expect_eq(a.parameter_status(name), actual, f"ParameterStatus {name} after a query")


JAPANESE = "こんにちは"


def client_encoding_euc_jp(driver):
    """A client that starts with client_encoding EUC_JP (as PGCLIENTENCODING does)
    is told EUC_JP, so its driver encodes and decodes by it: Japanese text
    round-trips, and is stored as the same characters (read back in UTF-8 straight
    from PostgreSQL)."""
    # A first client in UTF8 makes the pool's first server login, whose
    # parameters the proxy could greet later clients with.
    Client(driver, "first", True).value("select 1")
    a = Client(driver, "A", True, client_encoding="EUC_JP")
    expect_eq(a.parameter_status("client_encoding"), "EUC_JP",
              "ParameterStatus client_encoding the client was greeted with")
    expect_eq(a.value("show client_encoding"), "EUC_JP", "the session's client_encoding (SHOW)")
    table = f"sy_euc_jp_{driver}_{UNIQUE}"
    a.execute(f"create table {table}(v text)")
    try:
        a.execute(f"insert into {table} values (%s)", (JAPANESE,))
        expect_eq(a.value(f"select v from {table}"), JAPANESE, "the text read back")
        expect_eq(a.value(f"select v = '{JAPANESE}' from {table}"), True,
                  "the text compared with a literal in the query")
        expect_eq(a.value("select convert_to(%s, 'UTF8')::text", (JAPANESE,)),
                  "\\x" + JAPANESE.encode("utf-8").hex(), "the parameter's characters")
        expect_eq(direct_value(f"select v from {table}"), JAPANESE,
                  "the text as stored (read directly in UTF-8)")
    finally:
        a.execute(f"drop table {table}")


def pool_configure():
    """psycopg_pool: `configure` sets search_path and commits; every checkout sees
    it, with another client's transactions in between."""
    def configure(conn):
        conn.execute("SET search_path TO pool_cfg, public")
        conn.commit()

    b = Client("psycopg3", "B", False)
    step("opening ConnectionPool(min_size=1, max_size=1, configure=...)")
    pool = psycopg_pool.ConnectionPool(libpq_dsn(), min_size=1, max_size=1, configure=configure,
                                       open=True, timeout=10)
    try:
        pool.wait(timeout=10)
        for i in range(1, 6):
            b.value("select 1")  # B holds a server while A checks out
            step(f"checkout #{i}")
            with pool.connection(timeout=10) as conn:
                got = conn.execute("show search_path").fetchone()[0]
            expect_eq(got, "pool_cfg, public", f"checkout #{i}: search_path")
            b.commit()
            with pool.connection(timeout=10) as conn:
                got = conn.execute("show search_path").fetchone()[0]
            expect_eq(got, "pool_cfg, public", f"checkout #{i} after B released: search_path")
    finally:
        pool.close(timeout=5)


def own_backend_pid():
    """Session mode (and directly): the pid psycopg2 reports for its connection is
    its server backend's: its own notifications carry it, and pg_terminate_backend()
    of it from another connection ends this one."""
    step("connecting")
    conn = psycopg2.connect(libpq_dsn())
    conn.autocommit = True
    own = conn.get_backend_pid()
    cur = conn.cursor()
    cur.execute("select pg_backend_pid()")
    expect_eq(cur.fetchone()[0], own, "pg_backend_pid() = get_backend_pid()")
    step("listen + notify on the same connection")
    cur.execute("listen sy_py_pid")
    cur.execute("notify sy_py_pid, 'own'")
    conn.poll()
    expect_eq([(n.pid, n.payload) for n in conn.notifies], [(own, "own")],
              "the own notification's pid")
    step("pg_terminate_backend(get_backend_pid()) from a direct connection")
    other = psycopg2.connect(direct_dsn())
    other.autocommit = True
    other_cur = other.cursor()
    other_cur.execute("select pg_terminate_backend(%s)", (own,))
    expect_eq(other_cur.fetchone()[0], True, "pg_terminate_backend()")
    other.close()
    step("the terminated connection's next query")
    # libpq usually writes the query before it reads the FATAL, and then reports
    # the closed connection, as it does directly.
    try:
        cur.execute("select 1")
    except psycopg2.OperationalError as e:
        print(f"  ok the query fails: {str(e).strip()!r}", flush=True)
    else:
        raise AssertionError("the query on a terminated connection succeeded")
    expect_eq(conn.closed != 0, True, "the connection is closed")


def libpq18_latest_protocol():
    """libpq 18 (bundled with psycopg 3's binary wheel) with
    max_protocol_version=latest asks for protocol 3.2; PostgreSQL 15 (and the
    proxy, which must answer as it does) negotiates 3.0, and the session works:
    queries, parameters, and a cancel with the key the client was given."""
    expect_eq(psycopg.pq.version() >= 180000, True, f"libpq {psycopg.pq.version()} is 18 or later")
    step("connecting with max_protocol_version=latest")
    conn = psycopg.connect(libpq_dsn(max_protocol_version="latest"), autocommit=True)
    try:
        expect_eq(conn.pgconn.full_protocol_version, 30000, "the negotiated protocol")
        expect_eq(conn.execute("select %s::int + 1", (41,)).fetchone()[0], 42,
                  "a query with a parameter")
        step("a cancel during pg_sleep(30)")
        killer = threading.Timer(0.5, conn.cancel_safe)
        killer.start()
        try:
            conn.execute("select pg_sleep(30)")
        except psycopg.errors.QueryCanceled:
            print("  ok pg_sleep(30) cancelled", flush=True)
        else:
            raise AssertionError("pg_sleep(30) was not cancelled")
        finally:
            killer.cancel()
        expect_eq(conn.execute("select 'after'").fetchone()[0], "after", "a query after the cancel")
    finally:
        conn.close()


def cases():
    table = {}
    for prefix, driver in (("pg2", "psycopg2"), ("pg3", "psycopg3")):
        for fn in (leak_set_role, leak_reset_all_keeps_role, leak_set_config, leak_temp_table,
                   leak_advisory_lock, tx_rollback_discards, tx_savepoint_rollback,
                   tx_set_local, tx_failed_transaction, startup_options_reported,
                   client_encoding_euc_jp):
            table[f"{prefix}_{fn.__name__}"] = (lambda fn=fn, driver=driver: fn(driver))
        for name in SETTINGS:
            table[f"{prefix}_tx_committed_{name}"] = (
                lambda name=name, driver=driver: tx_committed(driver, name))
    table["pg3_pool_configure"] = pool_configure
    table["pg2_own_backend_pid"] = own_backend_pid
    table["pg3_libpq18_latest_protocol"] = libpq18_latest_protocol
    return table


if __name__ == "__main__":
    main(cases())
