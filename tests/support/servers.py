"""Running an ASGI app on a real loopback port inside the test process (uvicorn in a thread).

Services that talk to each other over HTTP (the care-plan service reads the catalog)
are tested that way: real sockets, real httpx, no mocks.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(app: FastAPI | LoopWatch, port: int | None = None) -> Iterator[str]:
    """Serve `app` on 127.0.0.1; yields its base URL (no trailing slash) once it is up."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the app on port {port} did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class LoopWatch:
    """An ASGI wrapper that watches the event loop the app runs on, from inside it.

    A task on that loop sleeps 10 ms at a time and records, for each sleep, how late it woke (`lags`) and how
    much CPU time the loop's thread spent meanwhile (`busy`). A handler computing on the loop shows in both;
    a machine too loaded to schedule the test process shows only in the first, so `busy` is what tells a
    handler that blocks the loop (the probes' wall-clock stall is measured separately, by /healthz)."""

    def __init__(self, app: Any, period: float = 0.01) -> None:
        self.app = app
        self.period = period
        self.lags: list[float] = []
        self.busy: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())
        await self.app(scope, receive, send)

    async def _watch(self) -> None:
        while True:
            wall, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(self.period)
            self.lags.append(time.perf_counter() - wall - self.period)
            self.busy.append(time.thread_time() - cpu)

    def reset(self) -> None:
        self.lags.clear()
        self.busy.clear()

    @property
    def longest_block(self) -> float:
        """The most CPU time the loop's thread spent between two ticks (seconds)."""
        return max(self.busy, default=0.0)
