"""A small subscription endpoint: an HTTP server on loopback that records every notification it receives.

Used by the tests (started in a thread) and by the README's worked example
(`python -m tests.subscriptions.receiver --port 9000` prints each notification's type and event numbers).

Behaviour is scripted per request: `answer(503, times=3)` makes the next three requests fail;
`delay` holds each answer (a notification in flight); `hold()` keeps every answer back until
`release()`, and `held` counts the requests waiting (a notification surely in flight); `lose(n)`
accepts event number n with a 200 but forgets it (a notification lost on the receiver's side: a gap
for `$events` to fill).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    bundle: dict[str, Any]

    @property
    def status(self) -> dict[str, Any]:
        return self.bundle["entry"][0]["resource"]

    def parameter(self, name: str) -> Any:
        for parameter in self.status["parameter"]:
            if parameter["name"] == name:
                return next(v for k, v in parameter.items() if k.startswith("value"))
        return None

    @property
    def kind(self) -> str:
        return self.parameter("type")

    @property
    def subscription(self) -> str:
        return self.parameter("subscription")["reference"].rsplit("/", 1)[-1]

    @property
    def event_numbers(self) -> list[int]:
        return [int(part["valueString"]) for parameter in self.status["parameter"]
                if parameter["name"] == "notification-event"
                for part in parameter["part"] if part["name"] == "event-number"]

    @property
    def focus(self) -> list[str]:
        return [part["valueReference"]["reference"] for parameter in self.status["parameter"]
                if parameter["name"] == "notification-event"
                for part in parameter["part"] if part["name"] == "focus"]


def _open_gate() -> threading.Event:
    gate = threading.Event()
    gate.set()
    return gate


@dataclass
class Receiver:
    host: str = "127.0.0.1"
    port: int = 0
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    attempts: int = 0
    _script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    _lost: set[int] = field(default_factory=set)
    _failing: dict[str, int] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    """Notifications received, by type (cheap to poll while thousands arrive)."""
    held: int = 0
    """Requests received and not yet answered because of `hold()`."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _gate: threading.Event = field(default_factory=lambda: _open_gate())
    _server: ThreadingHTTPServer | None = None

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def url(self, path: str = "hook") -> str:
        return self.base + path

    def answer(self, status: int, *, times: int = 1, headers: dict[str, str] | None = None) -> None:
        with self._lock:
            self._script += [(status, headers or {})] * times

    def fail(self, path: str, status: int = 500) -> None:
        """Answer every request to /<path> with `status` from now on (an endpoint down for good)."""
        with self._lock:
            self._failing["/" + path] = status

    def lose(self, number: int) -> None:
        with self._lock:
            self._lost.add(number)

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def _wait_at_gate(self) -> None:
        if self._gate.is_set():
            return
        with self._lock:
            self.held += 1
        self._gate.wait()
        with self._lock:
            self.held -= 1

    def events(self, subscription: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.kind == "event-notification"
                    and (subscription is None or r.subscription == subscription)]

    def of_kind(self, kind: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.kind == kind]

    def wait_for(self, predicate: Any, timeout: float = 20.0, what: str = "notifications") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; received {len(self.received)}")
            time.sleep(0.02)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real endpoint

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if receiver.delay:
                    time.sleep(receiver.delay)
                receiver._wait_at_gate()
                with receiver._lock:
                    receiver.attempts += 1
                    status, extra = receiver._script.pop(0) if receiver._script else (200, {})
                    status = receiver._failing.get(self.path, status)
                    if status == 200:
                        got = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, json.loads(body))
                        if not set(got.event_numbers) & receiver._lost:
                            receiver.received.append(got)
                            receiver.counts[got.kind] += 1
                        receiver._lost -= set(got.event_numbers)
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # a notifier opens its connections at once; the default 5 drops SYNs

        self._server = Server((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Print the subscription notifications posted to this port.")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    receiver = Receiver(port=args.port).start()
    print(f"listening on {receiver.base}", flush=True)
    seen = 0
    try:
        while True:
            time.sleep(0.2)
            for got in receiver.received[seen:]:
                print(json.dumps({"type": got.kind, "subscription": got.subscription,
                                  "events": got.event_numbers, "focus": got.focus}), flush=True)
            seen = len(receiver.received)
    except KeyboardInterrupt:
        receiver.stop()


if __name__ == "__main__":
    main()
