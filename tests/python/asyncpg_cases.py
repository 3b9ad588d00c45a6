"""asyncpg through Switchyard (issue #13 item 1): asyncpg prepares every query with
Parse + Describe + Flush and waits for the replies before it sends Bind/Execute/Sync,
so a proxy that holds replies back until a Sync hangs it. Issue #14: the backend
as asyncpg sees it (its pid in session mode, the server's FATAL when the server
ends the session, a cancel by the driver's key, a client that leaves mid-query).
Run one case: `python asyncpg_cases.py CASE` (see sy_cases.py for the
environment)."""

import asyncio
import contextlib
import os

import asyncpg

from sy_cases import (DBNAME, DIRECT_PORT, HOST, OP_TIMEOUT, PASSWORD, PORT, USER,
                      expect_eq, main, step)

# A table name unique to this process, so runs against one database do not clash.
TABLE = f"sy_asyncpg_{os.getpid()}"


async def connect(port=PORT, **kwargs):
    step(f"connecting to {HOST}:{port} ({kwargs or 'defaults'})")
    return await asyncpg.connect(
        host=HOST, port=port, user=USER, password=PASSWORD, database=DBNAME,
        ssl=False, timeout=OP_TIMEOUT, command_timeout=OP_TIMEOUT, **kwargs)


@contextlib.asynccontextmanager
async def connection(**kwargs):
    """A connection closed after the block, or dropped without waiting for
    anything if the block failed (so the failing step stays the reported one)."""
    conn = await connect(**kwargs)
    try:
        yield conn
    except BaseException:
        conn.terminate()
        raise
    await conn.close(timeout=OP_TIMEOUT)


async def fetchval_no_cache():
    async with connection(statement_cache_size=0) as conn:
        for i in range(3):
            step(f"fetchval('select $1::int + 1', 41) #{i + 1} (unnamed statement)")
            expect_eq(await conn.fetchval("select $1::int + 1", 41), 42, f"fetchval #{i + 1}")


async def fetchval_default_cache():
    async with connection() as conn:
        for i in range(3):
            step(f"fetchval('select $1::int + 1', 41) #{i + 1} (cached named statement)")
            expect_eq(await conn.fetchval("select $1::int + 1", 41), 42, f"fetchval #{i + 1}")
        step("fetchrow with two parameters")
        row = await conn.fetchrow("select $1::text || $2::text as s, $3::int * 2 as d", "a", "b", 21)
        expect_eq((row["s"], row["d"]), ("ab", 42), "fetchrow")


async def prepared_fetch_repeatedly():
    async with connection() as conn:
        step("prepare('select $1::int * 10, $2::text')")
        stmt = await conn.prepare("select $1::int * 10 as n, $2::text as t")
        expect_eq([a.name for a in stmt.get_attributes()], ["n", "t"], "prepared columns")
        for i in range(10):
            step(f"prepared fetchrow #{i + 1}")
            row = await stmt.fetchrow(i, f"v{i}")
            expect_eq((row["n"], row["t"]), (i * 10, f"v{i}"), f"prepared row #{i + 1}")
        step("prepared fetchval, fetch")
        expect_eq(await stmt.fetchval(7, "x"), 70, "prepared fetchval")
        expect_eq(len(await stmt.fetch(1, "y")), 1, "prepared fetch rows")


async def with_table(conn, body):
    step(f"create table {TABLE}")
    await conn.execute(f"create table {TABLE}(id int primary key, v text)")
    await body()
    # Not dropped after a failure: the table name is unique to this process.
    step(f"drop table {TABLE}")
    await conn.execute(f"drop table if exists {TABLE}")


async def executemany_rows():
    async with connection() as conn:
        async def body():
            step("executemany insert of 50 rows")
            await conn.executemany(f"insert into {TABLE}(id, v) values ($1, $2)",
                                   [(i, f"row {i}") for i in range(50)])
            step("count and sum")
            row = await conn.fetchrow(f"select count(*) as c, sum(id) as s from {TABLE}")
            expect_eq((row["c"], row["s"]), (50, sum(range(50))), "rows inserted by executemany")
        await with_table(conn, body)


async def copy_records():
    async with connection() as conn:
        async def body():
            step("copy_records_to_table, 1000 records")
            result = await conn.copy_records_to_table(
                TABLE, records=[(i, f"r{i}") for i in range(1000)], columns=["id", "v"],
                timeout=OP_TIMEOUT)
            expect_eq(result, "COPY 1000", "copy status")
            step("count")
            expect_eq(await conn.fetchval(f"select count(*) from {TABLE}"), 1000, "rows copied")
        await with_table(conn, body)


async def transaction_commit_and_rollback():
    async with connection() as conn:
        async def body():
            step("transaction: insert 1, commit")
            async with conn.transaction():
                await conn.execute(f"insert into {TABLE} values ($1, $2)", 1, "committed")
                expect_eq(await conn.fetchval(f"select count(*) from {TABLE}"), 1,
                          "row visible inside the transaction")
            step("transaction: insert 2, raise (rollback)")
            try:
                async with conn.transaction():
                    await conn.execute(f"insert into {TABLE} values ($1, $2)", 2, "rolled back")
                    raise RuntimeError("roll me back")
            except RuntimeError:
                pass
            step("transaction: failing statement inside (rollback)")
            try:
                async with conn.transaction():
                    await conn.execute(f"insert into {TABLE} values ($1, $2)", 3, "x")
                    await conn.fetchval("select 1 / $1::int", 0)
            except asyncpg.DivisionByZeroError:
                pass
            step("what stayed")
            rows = await conn.fetch(f"select id, v from {TABLE} order by id")
            expect_eq([tuple(r) for r in rows], [(1, "committed")], "rows after commit + 2 rollbacks")
            step("connection usable after the rollbacks")
            expect_eq(await conn.fetchval("select $1::int + 1", 1), 2, "query after rollbacks")
        await with_table(conn, body)


async def two_concurrent_connections():
    async def work(conn, name, base):
        for i in range(40):
            step(f"{name}: query #{i + 1}")
            got = await conn.fetchval("select $1::int + $2::int", base, i)
            if got != base + i:
                raise AssertionError(f"{name} query #{i + 1}: expected {base + i}, got {got}")
            if i % 10 == 0:
                async with conn.transaction():
                    await conn.fetchval("select pg_sleep(0.02)")
        return name

    async with connection() as a, connection(statement_cache_size=0) as b:
        done = await asyncio.gather(work(a, "A", 1000), work(b, "B", 2000))
        expect_eq(sorted(done), ["A", "B"], "both clients finished 40 queries each")


# ---------------------------------------------------------------------------
# Issue #14: the backend as the driver sees it
# ---------------------------------------------------------------------------

async def own_backend_pid():
    """Session mode (and directly): get_server_pid() is the server backend's pid,
    so a listener can tell its own notifications from another connection's."""
    async with connection() as conn, connection() as other:
        own = conn.get_server_pid()
        expect_eq(await conn.fetchval("select pg_backend_pid()"), own,
                  "pg_backend_pid() = get_server_pid()")
        received = asyncio.Queue()
        await conn.add_listener("sy_asyncpg_pid", lambda _c, pid, _ch, payload:
                                received.put_nowait((pid, payload)))
        step("notify on the listening connection itself")
        await conn.execute("notify sy_asyncpg_pid, 'own'")
        expect_eq(await asyncio.wait_for(received.get(), OP_TIMEOUT), (own, "own"),
                  "the own notification's (pid, payload)")
        step("notify from another connection")
        await other.execute("notify sy_asyncpg_pid, 'other'")
        expect_eq(await asyncio.wait_for(received.get(), OP_TIMEOUT),
                  (other.get_server_pid(), "other"), "the other's notification's (pid, payload)")


async def wait_active(direct, pid):
    """Waits until backend `pid` sleeps in pg_sleep: asyncpg prepares first, and a
    cancel that arrives between its Parse and its Execute finds the backend idle,
    which PostgreSQL ignores (directly as through a proxy)."""
    step(f"waiting for backend {pid} to sleep in pg_sleep")
    for _ in range(100):
        if await direct.fetchval(
                "select count(*) from pg_stat_activity where pid = $1 and state = 'active' "
                "and wait_event = 'PgSleep'", pid):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"backend {pid} never ran the query")


async def terminated_by_its_pid():
    """Session mode (and directly): pg_terminate_backend(get_server_pid()) from a
    connection straight to PostgreSQL ends this one. A running query fails with
    the server's FATAL (asyncpg reports the closed connection with the FATAL's
    message); an idle connection is found closed at its next query."""
    killer = await connect(port=DIRECT_PORT)
    try:
        busy = await connect()
        own = busy.get_server_pid()
        sleeping = asyncio.ensure_future(busy.fetchval("select pg_sleep(30)"))
        await wait_active(killer, own)
        step(f"pg_terminate_backend({own}) while it runs pg_sleep(30)")
        expect_eq(await killer.fetchval("select pg_terminate_backend($1)", own), True,
                  "pg_terminate_backend()")
        try:
            await asyncio.wait_for(sleeping, OP_TIMEOUT)
        except asyncpg.exceptions.ConnectionDoesNotExistError as e:
            # asyncpg raises the FATAL itself only once the query is answered; a
            # FATAL mid-query ends the connection and is quoted in this error.
            expect_eq("terminating connection due to administrator command" in str(e), True,
                      f"the server's FATAL in {str(e)!r}")
        else:
            raise AssertionError("the query on a terminated connection succeeded")
        expect_eq(busy.is_closed(), True, "the busy connection is closed")

        idle = await connect()
        own = idle.get_server_pid()
        step(f"pg_terminate_backend({own}) while it is idle")
        expect_eq(await killer.fetchval("select pg_terminate_backend($1)", own), True,
                  "pg_terminate_backend()")
        await asyncio.sleep(0.2)
        try:
            await idle.fetchval("select 1")
        except (asyncpg.exceptions.InterfaceError,
                asyncpg.exceptions.ConnectionDoesNotExistError) as e:
            print(f"  ok the next query fails: {type(e).__name__}: {e}", flush=True)
        else:
            raise AssertionError("the query on a terminated connection succeeded")
        expect_eq(idle.is_closed(), True, "the idle connection is closed")
    finally:
        await killer.close(timeout=OP_TIMEOUT)


async def cancelled_by_its_pid():
    """Session mode (and directly): pg_cancel_backend(get_server_pid()) from a
    direct connection cancels this connection's running query, which the driver
    reports as QueryCanceledError; the connection stays usable."""
    async with connection() as conn:
        own = conn.get_server_pid()
        killer = await connect(port=DIRECT_PORT)
        sleeping = asyncio.ensure_future(conn.fetchval("select pg_sleep(30)"))
        await wait_active(killer, own)
        step(f"pg_cancel_backend({own})")
        expect_eq(await killer.fetchval("select pg_cancel_backend($1)", own), True,
                  "pg_cancel_backend()")
        await killer.close(timeout=OP_TIMEOUT)
        try:
            await asyncio.wait_for(sleeping, OP_TIMEOUT)
        except asyncpg.exceptions.QueryCanceledError as e:
            expect_eq(e.sqlstate, "57014", "the cancelled query's SQLSTATE")
        else:
            raise AssertionError("pg_sleep(30) was not cancelled")
        expect_eq(await conn.fetchval("select 41 + 1"), 42, "a query after the cancel")


async def cancel_through_the_driver():
    """Every mode: asyncpg's own timeout sends a CancelRequest with the key it was
    given; the query stops on the server and the connection stays usable."""
    async with connection() as conn:
        step("fetchval('select pg_sleep(30)', timeout=0.5)")
        try:
            await conn.fetchval("select pg_sleep(30) /* sy_asyncpg_timeout */", timeout=0.5)
        except asyncio.TimeoutError:
            pass
        else:
            raise AssertionError("pg_sleep(30) returned within 0.5 s")
        expect_eq(await conn.fetchval("select 41 + 1"), 42, "a query after the timeout")
        await expect_no_trace("sy_asyncpg_timeout", "after the driver's cancel")


async def expect_no_trace(marker, what):
    """Within 1 s no backend on the server runs (or last ran) the marked query."""
    direct = await connect(port=DIRECT_PORT)
    try:
        step(f"pg_stat_activity without /* {marker} */ {what}")
        count = None
        for _ in range(20):
            count = await direct.fetchval(
                "select count(*) from pg_stat_activity "
                "where query like $1 and pid <> pg_backend_pid()", f"%/* {marker} */%")
            if count == 0:
                break
            await asyncio.sleep(0.05)
        expect_eq(count, 0, f"backends showing the query {what}")
    finally:
        await direct.close(timeout=OP_TIMEOUT)


async def leaves_mid_query():
    """Every mode: a client that drops its connection (terminate(): no Terminate
    message, the socket just closes) while pg_sleep(60) runs leaves no trace of the
    query on the server within 1 s."""
    conn = await connect()
    sleeping = asyncio.ensure_future(conn.fetchval("select pg_sleep(60) /* sy_asyncpg_gone */"))
    direct = await connect(port=DIRECT_PORT)
    step("waiting for the pg_sleep to run on the server")
    for _ in range(100):
        if await direct.fetchval(
                "select count(*) from pg_stat_activity "
                "where query like '%/* sy_asyncpg_gone */%' and state = 'active' "
                "and pid <> pg_backend_pid()"):
            break
        await asyncio.sleep(0.05)
    await direct.close(timeout=OP_TIMEOUT)
    step("terminate() mid-query")
    conn.terminate()
    try:
        await sleeping
    except (asyncpg.exceptions.ConnectionDoesNotExistError, asyncpg.exceptions.InterfaceError):
        pass
    await expect_no_trace("sy_asyncpg_gone", "after the client left")


async def timeout_while_queued():
    """Transaction mode, pool of one: while another connection holds the only
    server in a transaction, an INSERT with timeout=0.5 waits for it; asyncpg's
    timeout sends a CancelRequest, gets its TimeoutError at once, the INSERT never
    runs (not even once the server is free), and the connection goes on. Both with
    the statement cache (the waiting request is asyncpg's Parse/Describe/Flush,
    without a Sync) and without it."""
    direct = await connect(port=DIRECT_PORT)
    await direct.execute(f"create table {TABLE}(v int)")
    await direct.execute(f"grant all on {TABLE} to public")
    try:
        for cache in (100, 0):
            async with connection() as holder, connection(statement_cache_size=cache) as waiter:
                step(f"holder: begin (statement cache {cache})")
                tx = holder.transaction()
                await tx.start()
                await holder.fetchval("select 1")
                step("waiter: insert with timeout=0.5 while the only server is held")
                started = asyncio.get_running_loop().time()
                try:
                    await waiter.execute(f"insert into {TABLE} values ($1)", cache, timeout=0.5)
                except asyncio.TimeoutError:
                    took = asyncio.get_running_loop().time() - started
                    print(f"  ok TimeoutError after {took:.2f} s", flush=True)
                    expect_eq(took < 3, True, "the timeout is not held up by the queue")
                else:
                    raise AssertionError("the insert returned while the only server was held")
                step("holder: commit; the server is free")
                await tx.commit()
                expect_eq(await waiter.fetchval("select 41 + 1"), 42, "the waiter goes on")
                await asyncio.sleep(0.3)
                expect_eq(await direct.fetchval(f"select count(*) from {TABLE}"), 0,
                          "rows inserted by the timed-out insert")
    finally:
        await direct.execute(f"drop table if exists {TABLE}")
        await direct.close(timeout=OP_TIMEOUT)

CASES = {
    "fetchval_no_cache": fetchval_no_cache,
    "fetchval_default_cache": fetchval_default_cache,
    "prepared_fetch_repeatedly": prepared_fetch_repeatedly,
    "executemany": executemany_rows,
    "copy_records_to_table": copy_records,
    "transaction_commit_and_rollback": transaction_commit_and_rollback,
    "two_concurrent_connections": two_concurrent_connections,
    "cancel_through_the_driver": cancel_through_the_driver,
    "leaves_mid_query": leaves_mid_query,
    # Session mode and direct only: a transaction-mode client has no backend of
    # its own (its pid is minted).
    "own_backend_pid": own_backend_pid,
    "terminated_by_its_pid": terminated_by_its_pid,
    "cancelled_by_its_pid": cancelled_by_its_pid,
    # Transaction mode with a pool of one only: the request has to wait.
    "timeout_while_queued": timeout_while_queued,
}

if __name__ == "__main__":
    main(CASES)
