"""asyncpg through Switchyard (issue #13 item 1): asyncpg prepares every query with
Parse + Describe + Flush and waits for the replies before it sends Bind/Execute/Sync,
so a proxy that holds replies back until a Sync hangs it. Run one case:
`python asyncpg_cases.py CASE` (see sy_cases.py for the environment)."""

import asyncio
import contextlib
import os

import asyncpg

from sy_cases import (DBNAME, HOST, OP_TIMEOUT, PASSWORD, PORT, USER, expect_eq,
                      main, step)

# A table name unique to this process, so runs against one database do not clash.
TABLE = f"sy_asyncpg_{os.getpid()}"


async def connect(**kwargs):
    step(f"connecting to {HOST}:{PORT} ({kwargs or 'defaults'})")
    return await asyncpg.connect(
        host=HOST, port=PORT, user=USER, password=PASSWORD, database=DBNAME,
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


CASES = {
    "fetchval_no_cache": fetchval_no_cache,
    "fetchval_default_cache": fetchval_default_cache,
    "prepared_fetch_repeatedly": prepared_fetch_repeatedly,
    "executemany": executemany_rows,
    "copy_records_to_table": copy_records,
    "transaction_commit_and_rollback": transaction_commit_and_rollback,
    "two_concurrent_connections": two_concurrent_connections,
}

if __name__ == "__main__":
    main(CASES)
