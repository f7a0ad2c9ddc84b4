"""PostgreSQL statements run on the event loop itself, for the two paths every patient-data read takes.

A care-plan read by id is one indexed lookup and one AuditEvent. Through SQLAlchemy sessions in worker
threads each cost two thread hops, a BEGIN, a ROLLBACK or COMMIT, and the GIL handed back and forth with
the event loop: about a millisecond of CPU for a few hundred microseconds of database work. `LoopDatabase`
runs those statements with psycopg's async connections from a bounded pool (psycopg_pool), in autocommit:
a read is one round trip, and a batch of audit events one statement (atomic on its own, so no BEGIN and
COMMIT round trips either). A write of several statements, a new care plan with its delivery row, is one
`transaction` in pipeline mode: statements go out as they are given, and only a result asked for waits.

Only where the rest of the service's writes cannot notice the difference: the statements are the ones
the thread path runs (the store's own, and Core statements compiled once by `LoopStatement`), and the
pool is used only on the loop that opened it, in the app's lifespan. Anywhere else (SQLite,
`LOOP_CONNECTIONS=0`, an app driven without its lifespan) `usable()` is false and callers keep the
thread path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeGuard

import orjson
from psycopg import AsyncConnection, AsyncCursor, sql
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy import Table
from sqlalchemy.engine import make_url
from sqlalchemy.sql.elements import ClauseElement

from services.fhir.outcome import ServiceUnavailable
from services.fhir.workpool import retry_after

log = logging.getLogger("cicatrix.db")

_POSTGRESQL = make_url("postgresql+psycopg://").get_dialect()()


def conninfo(url: str) -> str | None:
    """The libpq URI of a `postgresql+psycopg://` URL (query options such as a search_path kept), or None for
    any other database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return None
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


class LoopDatabase:
    """A pool of at most `size` autocommit connections, opened on the running loop by `open`.

    Statements are given as bytes, composed once by their owner: psycopg remembers how it converted a bytes
    query, where a `sql.Composed` is composed again on every execution."""

    def __init__(self, conninfo: str, size: int, timeout: float) -> None:
        self.conninfo = conninfo
        self.size = size
        self.timeout = timeout
        self._pool: AsyncConnectionPool[AsyncConnection[TupleRow]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def of(cls, url: str, size: int, timeout: float) -> LoopDatabase | None:
        """One for a PostgreSQL URL with `size` > 0; None where the thread path is the only one."""
        info = conninfo(url)
        return cls(info, size, timeout) if info is not None and size > 0 else None

    async def open(self) -> None:
        """Start the pool; it connects in the background, so a service whose database is not up yet still
        starts (and says so on /readyz), as it does without these connections."""
        pool: AsyncConnectionPool[AsyncConnection[TupleRow]] = AsyncConnectionPool(
            self.conninfo, min_size=1, max_size=self.size, open=False, timeout=self.timeout,
            kwargs={"autocommit": True}, name="loop")
        await pool.open()
        self._pool, self._loop = pool, asyncio.get_running_loop()
        log.info("event-loop database connections started", extra={"max_connections": self.size})

    async def close(self) -> None:
        pool, self._pool, self._loop = self._pool, None, None
        if pool is not None:
            await pool.close()

    def usable(self) -> bool:
        """Open, and on the loop that opened it (asyncio connections belong to one loop)."""
        if self._pool is None:
            return False
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    async def fetch_one(self, query: bytes, params: Sequence[Any]) -> tuple[Any, ...] | None:
        """One statement in autocommit: a single round trip, no BEGIN or ROLLBACK.

        Its row comes in binary: a stored resource's bytes as they are, where text would send them hex-escaped,
        twice as long, for psycopg to decode (40 % of the client's CPU for a care plan of 20 KB)."""
        async with self._connection() as connection:
            cursor = await connection.execute(query, params, prepare=True, binary=True)
            row: tuple[Any, ...] | None = await cursor.fetchone()
            return row

    async def execute(self, query: bytes, params: Sequence[Any]) -> None:
        """One statement in autocommit: atomic on its own, a single round trip and a single commit."""
        async with self._connection() as connection:
            await connection.execute(query, params, prepare=True)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[LoopTransaction]:
        """One transaction, committed when the block ends and rolled back when it raises; the callbacks given to
        `LoopTransaction.after_commit` run once it has committed. A failed statement raises where its result is
        first asked for, at the latest when the block ends."""
        async with self._connection() as connection:  # the pool's connection rolls back if the block raises
            transaction = LoopTransaction(connection)
            async with connection.pipeline():  # BEGIN and COMMIT as its statements: cheaper than transaction() in it
                await connection.execute(b"BEGIN")
                yield transaction
                await connection.execute(b"COMMIT")  # goes out with the last statements
        for callback in transaction.committed:
            callback()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[TupleRow]]:
        """A connection within `timeout`, else 503 with Retry-After: the database is busy or unreachable."""
        assert self._pool is not None
        try:
            async with self._pool.connection() as connection:
                yield connection
        except PoolTimeout:
            raise ServiceUnavailable("The service is busy (no database connection within its time budget); "
                                     "try again shortly",
                                     headers={"Retry-After": retry_after(self.timeout)}) from None


class LoopStatement:
    """A Core statement compiled once for psycopg, so that the event-loop path runs the very statement the
    session path runs: its text, and the values it binds itself (literals of the Core expression)."""

    def __init__(self, statement: ClauseElement) -> None:
        compiled = statement.compile(dialect=_POSTGRESQL)
        self.query = compiled.string.encode()
        self._bound = {name: value for name, value in compiled.params.items() if value is not None}

    def params(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return self._bound | dict(values)


class LoopTransaction:
    """A transaction on an event-loop connection in pipeline mode (`LoopDatabase.transaction`): `execute`
    sends a statement without waiting for it; fetching from the cursor it returns waits for the answer."""

    def __init__(self, connection: AsyncConnection[TupleRow]) -> None:
        self._connection = connection
        self.committed: list[Callable[[], None]] = []
        """What to call once the transaction has committed (in-process wake-ups), each once."""

    async def execute(self, statement: bytes | LoopStatement,
                      params: Sequence[Any] | Mapping[str, Any] = ()) -> AsyncCursor[TupleRow]:
        if isinstance(statement, LoopStatement):
            assert isinstance(params, Mapping), "a compiled Core statement takes its values by name"
            return await self._connection.execute(statement.query, statement.params(params), prepare=True)
        return await self._connection.execute(statement, params, prepare=True)

    def after_commit(self, callback: Callable[[], None]) -> None:
        if callback not in self.committed:
            self.committed.append(callback)


def on_loop(database: LoopDatabase | None) -> TypeGuard[LoopDatabase]:
    """Whether statements go through `database` here, rather than a session in a worker thread."""
    return database is not None and database.usable()


class RowInserts:
    """One statement inserting rows into several tables (`WITH t0 AS (INSERT ...), ... INSERT ...`): each table's
    rows as one JSON array parameter, read by `jsonb_to_recordset`, beside one binary bytea array for each of its
    binary columns, the two zipped by `ROWS FROM`.

    Its text does not depend on the number of rows, so it is prepared once, and a batch is a few parameters a
    table: psycopg's array dumpers, in Python, cost more than the database's JSON parser for the many small
    values. Binary columns hold whole resources, though, tens of kilobytes of JSON that the database would parse
    a second time as a string escaped inside JSON: as bytes in binary they cost it about half. The record's types
    are the tables' own, without lengths (a cast to `VARCHAR(64)` would cut a longer value short, where the insert
    refuses it)."""

    def __init__(self, tables: Sequence[tuple[Table, Sequence[str]]]) -> None:
        self._binary: list[list[str]] = []
        """The binary columns of each table, in the order of their parameters."""
        inserts = []
        for table, columns in tables:
            types = {name: table.c[name].type.compile(dialect=_POSTGRESQL).split("(", 1)[0] for name in columns}
            binary = [name for name in columns if types[name] == "BYTEA"]
            plain = [name for name in columns if name not in binary]
            self._binary.append(binary)
            record = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(types[name]))
                                        for name in plain)
            sources = sql.SQL(", ").join([sql.SQL("jsonb_to_recordset(%s::jsonb) AS ({})").format(record)]
                                         + [sql.SQL("unnest(%b::bytea[])") for _ in binary])
            names = sql.SQL(", ").join(map(sql.Identifier, plain + binary))
            inserts.append(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM ROWS FROM ({}) AS r({})").format(
                sql.Identifier(table.name), names, names, sources, names))
        ctes = sql.SQL(", ").join(sql.SQL("{} AS ({})").format(sql.Identifier(f"t{n}"), statement)
                                  for n, statement in enumerate(inserts[:-1]))
        self.query = (sql.SQL("WITH {} {}").format(ctes, inserts[-1]) if len(inserts) > 1 else inserts[0]).as_bytes()

    def params(self, rows_of_tables: Sequence[Sequence[Mapping[str, Any]]]) -> list[Any]:
        """The statement's parameters for these rows of each table, in the order the tables were given."""
        params: list[Any] = []
        for binary, rows in zip(self._binary, rows_of_tables, strict=True):
            if not binary:
                params.append(orjson.dumps(rows).decode())
                continue
            params.append(orjson.dumps([{k: v for k, v in row.items() if k not in binary} for row in rows]).decode())
            params.extend([row[name] for row in rows] for name in binary)
        return params
