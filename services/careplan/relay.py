"""The outbox relay loop: claim due work, run it concurrently, sleep until there is more.

One loop per queue per process (the plan delivery dispatcher, the subscription
notifier), embedded in the careplan app or run by `cicatrix dispatch`:

    claim up to `batch_size` due rows and read what each needs (one thread hop)
    -> one asyncio task per row  ->  claim again when half the slots are free
    idle: sleep until woken (NOTIFY on PostgreSQL, a poke after a local commit, a finished task),
          until the next retry or lease falls due, or `poll_seconds` at most (the polling fallback)

A task may end with a result to write (whatever its work coroutine returns other than None). The
results of finished tasks are handed to the next claim, which writes them in its own transaction
before claiming: one thread hop and one commit for a batch of results, not one each. A result waits
at most `settle_seconds` for that claim; with nothing left in flight it is written at once.

Everything a row needs is read from the database for each attempt and every outcome
is written back by the subclass, so the process can be killed at any moment: rows it
held come back after their lease (see `services.careplan.leases`), results not yet written
included. While it lives, it renews the lease of its in-flight rows, and of rows whose result
waits to be written, every third of the lease, so an attempt slower than the lease is never
taken over and sent twice.

`stop()` stops claiming, lets in-flight work finish for `grace_seconds`, then cancels
the rest; a subclass releases a cancelled row at once for another worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy.engine import Engine

from services.fhir.store import utcnow

log = logging.getLogger("cicatrix.careplan.relay")

Work = Callable[[], Coroutine[Any, Any, object | None]]
"""A claimed row's attempt; what it returns (unless None) is handed to the next `_claim_work` to write."""

SETTLE_SECONDS = 0.1
"""How long a finished task's result may wait for the next claim to write it."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Relay:
    """The loop; subclasses say what to claim (`_claim_work`) and how much is left (`_open_count`, `_next_due`)."""

    channel: str
    """PostgreSQL NOTIFY channel that wakes this relay (what queues work calls `leases.notify` on it)."""
    name = "relay"

    def __init__(self, engine: Engine, *, worker: str | None, batch_size: int, poll_seconds: float,
                 grace_seconds: float, lease_seconds: float) -> None:
        self.engine = engine
        self.lease_seconds = lease_seconds
        self.worker = worker or worker_name()
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.grace_seconds = grace_seconds
        self._in_flight: dict[str, asyncio.Task[object | None]] = {}
        self._unwritten: list[tuple[str, object]] = []
        """(row key, result) of finished tasks, in the order they finished; written by the next claim."""
        self._unwritten_since = 0.0
        self.settle_seconds = SETTLE_SECONDS
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    # ----------------------------------------------------------------- subclass hooks

    def _claim_work(self, limit: int, results: list[object]) -> list[tuple[str, Work]]:
        """Write `results` (of finished tasks), then claim up to `limit` rows (none when 0), in a worker thread;
        (row key, the coroutine that works it) each. `results` are the subclass's to write, even if it raises."""
        raise NotImplementedError

    def _renew_work(self, keys: list[str]) -> None:
        """Extend the lease on the rows behind `keys`, all in flight here (runs in a worker thread)."""
        raise NotImplementedError

    def _open_count(self) -> int:
        raise NotImplementedError

    def _next_due(self) -> datetime | None:
        raise NotImplementedError

    def _background(self) -> list[asyncio.Task[None]]:
        """Tasks to run beside the loop (cancelled when it ends)."""
        return []

    # ----------------------------------------------------------------- control

    def poke(self) -> None:
        """Wake the loop now (thread-safe): called after a commit that queued work."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    def stop(self) -> None:
        """Stop claiming; `run` then finishes or releases what it holds and returns (thread-safe)."""
        self._stopping = True
        self.poke()

    async def run(self, *, until_idle: bool = False) -> None:
        """Work until `stop()`; with `until_idle`, return once nothing is pending or in flight."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        background = self._background() + [asyncio.create_task(self._keep_leases())]
        if self.engine.dialect.name == "postgresql":
            background.append(asyncio.create_task(self._listen()))
        log.info(f"{self.name} started", extra={"worker": self.worker})
        try:
            while not self._stopping:
                self._wake.clear()
                claimed = await self._claim()
                idle = until_idle and not self._in_flight and not self._unwritten and not claimed
                if idle and await asyncio.to_thread(self._open_count) == 0:
                    return
                if claimed and len(self._in_flight) < self.batch_size:
                    continue  # there may be more due right now
                await self._sleep()
        finally:
            for task in background:
                task.cancel()
            await self._drain()
            await self._write_results()
            log.info(f"{self.name} stopped", extra={"worker": self.worker})

    async def _claim(self) -> int:
        free = self.batch_size - len(self._in_flight)
        if free <= 0 or (self._in_flight and free < max(1, self.batch_size // 2)):
            free = 0  # claim in batches: one claim transaction per few rows, not per row
        if free == 0 and not self._results_due():
            return 0
        results, self._unwritten = [result for _, result in self._unwritten], []
        try:
            claimed = await asyncio.to_thread(self._claim_work, free, results)
        except Exception as exc:  # noqa: BLE001 - a database hiccup must not end the loop
            log.warning("claiming failed; will try again", extra={"error": type(exc).__name__, "relay": self.name})
            return 0
        started = 0
        for key, work in claimed:
            if key in self._in_flight:  # its lease lapsed (renewal failed): never two attempts at once
                log.warning("claimed a row already in flight here; left to its running attempt",
                            extra={"relay": self.name})
                continue
            started += 1
            task = asyncio.create_task(work())
            self._in_flight[key] = task
            task.add_done_callback(partial(self._done, key))
        return started

    def _done(self, key: str, task: asyncio.Task[object | None]) -> None:
        self._in_flight.pop(key, None)
        if not task.cancelled():
            error = task.exception()
            if error is not None:
                log.error(f"{self.name}: an attempt ended with an error; its row comes back after its lease",
                          exc_info=error, extra={"relay": self.name})
            elif (result := task.result()) is not None:
                if not self._unwritten:
                    self._unwritten_since = time.monotonic()
                self._unwritten.append((key, result))
        if self._wake is not None:
            self._wake.set()

    def _results_due(self) -> bool:
        """Whether the waiting results are written now rather than with a later claim."""
        return bool(self._unwritten) and (not self._in_flight or self._stopping
                                          or time.monotonic() - self._unwritten_since >= self.settle_seconds)

    async def _write_results(self) -> None:
        """Shutdown: write what finished tasks left; if that fails, their rows come back after their lease."""
        if not self._unwritten:
            return
        results, self._unwritten = [result for _, result in self._unwritten], []
        try:
            await asyncio.to_thread(self._claim_work, 0, results)
        except Exception as exc:  # noqa: BLE001 - shutting down: the leases bring the rows back
            log.warning("writing results at shutdown failed; the rows come back after their lease",
                        extra={"error": type(exc).__name__, "relay": self.name})

    async def _sleep(self) -> None:
        """Until woken, the next retry or lease falls due, or the poll interval passes."""
        timeout = self.poll_seconds
        due = None
        if not self._in_flight:  # with work in flight, each one finishing wakes the loop anyway
            try:
                due = await asyncio.to_thread(self._next_due)
            except Exception:  # noqa: BLE001 - the poll interval still bounds the sleep
                due = None
        if due is not None:
            timeout = min(timeout, max(0.0, (due - utcnow()).total_seconds()) + 0.005)
        if self._unwritten:
            timeout = min(timeout, max(0.0, self._unwritten_since + self.settle_seconds - time.monotonic()))
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    async def _keep_leases(self) -> None:
        """Renew the lease on what is in flight every third of the lease; a failure is retried next time."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            keys = [*self._in_flight, *(key for key, _ in self._unwritten)]
            if not keys:
                continue
            try:
                await asyncio.to_thread(self._renew_work, keys)
            except Exception as exc:  # noqa: BLE001 - a database hiccup must not end the loop
                log.warning("renewing leases failed; will try again", extra={"error": type(exc).__name__,
                                                                             "relay": self.name})

    async def _drain(self) -> None:
        """Shutdown: give in-flight work the grace period, then cancel it (subclasses release their rows)."""
        tasks = list(self._in_flight.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.grace_seconds)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)

    async def _listen(self) -> None:
        """LISTEN on the relay's channel on a connection of its own; reconnects, the poll covers any gap."""
        import psycopg

        conninfo = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not self._stopping:
            try:
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as connection:
                    await connection.execute(f"LISTEN {self.channel}")
                    async for _ in connection.notifies():
                        if self._wake is not None:
                            self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - fall back to polling, try to listen again later
                log.warning("LISTEN connection lost; polling meanwhile",
                            extra={"error": type(exc).__name__, "relay": self.name})
                await asyncio.sleep(self.poll_seconds)
