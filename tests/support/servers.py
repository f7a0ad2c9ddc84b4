"""Running an ASGI app on a real loopback port inside the test process (uvicorn in a thread).

Services that talk to each other over HTTP (the care-plan service reads the catalog)
are tested that way: real sockets, real httpx, no mocks. `serve_in_process` runs one
in a process of its own, with its event loop watched, for the abuse tests.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import multiprocessing
import multiprocessing.process
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(app: FastAPI, port: int | None = None) -> Iterator[str]:
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
    a machine too loaded to schedule the process shows only in the first, so `busy` is what tells a handler
    that blocks the loop (the wall-clock stall is measured separately, by probing /healthz).
    `GET /__loopwatch` answers the longest of each since the last `DELETE /__loopwatch`."""

    PATH = "/__loopwatch"

    def __init__(self, app: Any, period: float = 0.01) -> None:
        self.app = app
        self.period = period
        self.lags: list[float] = []
        self.busy: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())
        if scope["type"] == "http" and scope["path"] == self.PATH:
            if scope["method"] == "DELETE":
                self.lags.clear()
                self.busy.clear()
            body = json.dumps({"longest_lag": max(self.lags, default=0.0),
                               "longest_block": max(self.busy, default=0.0)}).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

    async def _watch(self) -> None:
        while True:
            wall, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(self.period)
            self.lags.append(time.perf_counter() - wall - self.period)
            self.busy.append(time.thread_time() - cpu)


def _serve_watched(factory: str, settings: dict[str, Any], port: int) -> None:
    """The body of a server process: build the app (`module:function(**settings)`) and serve it watched."""
    module, _, name = factory.partition(":")
    app = getattr(importlib.import_module(module), name)(**settings)
    uvicorn.run(LoopWatch(app), host="127.0.0.1", port=port, log_level="warning", access_log=False,
                lifespan="on")


@dataclass
class ServerProcess:
    url: str
    process: multiprocessing.process.BaseProcess

    def watched(self, reset: bool = False) -> dict[str, float]:
        """The loop watch's longest lag and block (seconds), since the last reset."""
        method = "DELETE" if reset else "GET"
        return httpx.request(method, self.url + LoopWatch.PATH, timeout=30).json()  # type: ignore[no-any-return]

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS for the server process")


@contextmanager
def serve_in_process(factory: str, **settings: Any) -> Iterator[ServerProcess]:
    """Serve the app `factory(**settings)` builds in a process of its own, watched by a `LoopWatch`: what the
    test process does (clients, probes) then takes nothing from the server's interpreter."""
    port = free_port()
    process = multiprocessing.get_context("spawn").Process(
        target=_serve_watched, args=(factory, settings, port), name=f"server-{port}", daemon=True)
    process.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if not process.is_alive() or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the server process for {factory} did not start")
        time.sleep(0.1)
    try:
        yield ServerProcess(url, process)
    finally:
        process.terminate()
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
