"""A small closed-loop HTTP/1.1 load generator, run as its own process (`python -m tests.bench.load SPEC`).

It is not the system under test: it shares nothing with the servers but the loopback interface. Each of
`connections` keep-alive connections sends one request, waits for the whole response, records the latency
and sends the next (as wrk does), cycling through the spec's requests. It speaks just enough HTTP/1.1 for
the servers measured here (Content-Length or chunked bodies) and prints one JSON object to stdout:

    {"requests": N, "seconds": S, "rps": R, "p50_ms": ..., "p99_ms": ..., "statuses": {"200": N}, "errors": N}

The spec (JSON file) names `host`, `port`, `connections`, `requests` (each {method, path, headers, body})
and either `seconds` (measured after `warmup` seconds) or `total` (a fixed number of requests).
Requests are pre-encoded once, so the generator spends its time on sockets, not on building requests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from typing import Any


def encode_request(host: str, port: int, spec: dict[str, Any]) -> bytes:
    body = base64.b64decode(spec["body_b64"]) if spec.get("body_b64") else spec.get("body", "").encode()
    lines = [f"{spec.get('method', 'GET')} {spec['path']} HTTP/1.1", f"Host: {host}:{port}"]
    headers = {"Accept": "application/fhir+json", **spec.get("headers", {})}
    if body:
        headers.setdefault("Content-Type", "application/fhir+json")
        headers["Content-Length"] = str(len(body))
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Connection(asyncio.Protocol):
    """One keep-alive connection: write a request, parse the response, hand it to the runner."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.started = 0.0
        self.finished = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def send(self) -> None:
        request = self.runner.next_request()
        if request is None:
            assert self.transport is not None
            self.finished = True
            self.transport.close()
            return
        self.started = time.perf_counter()
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            parsed = _parse(self.buffer)
            if parsed is None:
                return
            status, consumed = parsed
            del self.buffer[:consumed]
            self.runner.record(status, time.perf_counter() - self.started)
            self.send()
            if not self.buffer:
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if self.runner.running() and not self.finished:
            self.runner.errors += 1
        if not self.closed.done():
            self.closed.set_result(None)


def _parse(buffer: bytearray) -> tuple[int, int] | None:
    """(status, bytes consumed) of the first complete response in `buffer`, or None while it is incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    start = end + 4
    if not chunked:
        return (status, start + length) if len(buffer) >= start + length else None
    position = start
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(bytes(buffer[position:line_end]).split(b";")[0], 16)
        position = line_end + 2 + size + 2
        if len(buffer) < position:
            return None
        if size == 0:
            return status, position


class Runner:
    def __init__(self, spec: dict[str, Any]) -> None:
        host, port = spec.get("host", "127.0.0.1"), int(spec["port"])
        self.requests = [encode_request(host, port, r) for r in spec["requests"]]
        self.total = spec.get("total")
        self.sent = 0
        self.recording = False
        self.stopping = False
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors = 0
        self.completed = 0
        """Responses received, warm-up included (what the server did while its CPU time was read)."""

    def running(self) -> bool:
        return not self.stopping

    def next_request(self) -> bytes | None:
        if self.stopping or (self.total is not None and self.sent >= self.total):
            return None
        request = self.requests[self.sent % len(self.requests)]
        self.sent += 1
        return request

    def record(self, status: int, seconds: float) -> None:
        self.completed += 1
        if self.recording:
            self.latencies.append(seconds)
            self.statuses[status] = self.statuses.get(status, 0) + 1


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    runner = Runner(spec)
    host, port = spec.get("host", "127.0.0.1"), int(spec["port"])
    warmup = float(spec.get("warmup", 0))
    connections: list[Connection] = []
    if warmup:
        runner.recording = False
    else:
        runner.recording = True
    began = time.perf_counter()
    for _ in range(int(spec["connections"])):
        _, protocol = await loop.create_connection(lambda: Connection(runner), host, port)
        connections.append(protocol)
    if warmup:
        await asyncio.sleep(warmup)
        runner.recording = True
    measured_from = time.perf_counter()
    if runner.total is None:
        await asyncio.sleep(float(spec["seconds"]))
        runner.stopping = True
        measured = time.perf_counter() - measured_from
        for connection in connections:
            if connection.transport is not None:
                connection.transport.close()
    else:
        await asyncio.gather(*(c.closed for c in connections))
        measured = time.perf_counter() - (measured_from if warmup else began)
    latencies = sorted(runner.latencies)
    done = len(latencies)

    def percentile(q: float) -> float:
        return latencies[min(done - 1, int(q * done))] * 1000 if done else float("nan")

    return {"requests": done, "seconds": round(measured, 3), "rps": round(done / measured, 1) if measured else 0.0,
            "p50_ms": round(percentile(0.50), 3), "p99_ms": round(percentile(0.99), 3),
            "statuses": {str(k): v for k, v in sorted(runner.statuses.items())}, "errors": runner.errors,
            "completed": runner.completed}


def main() -> int:
    with open(sys.argv[1]) as handle:
        spec = json.load(handle)
    try:
        import uvloop  # type: ignore[import-not-found]
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    print(json.dumps(runner(run(spec))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
