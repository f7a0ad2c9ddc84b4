"""Request ids, structured logs and Prometheus metrics.

Logs are one JSON object per line with the request id, so a hospital's log
pipeline can follow a request across services. They carry resource types, ids,
routes and statuses only: never names, birth dates or assessment answers (PHI).
Each app owns its own metrics registry so two apps in one process (the tests)
do not collide.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import logging
import sys
import time
import traceback
from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


_second: tuple[int, str] = (-1, "")


def timestamp(moment: float) -> str:
    """ISO 8601 UTC with milliseconds; one strftime per second, not per line (the access log writes many)."""
    global _second
    second = int(moment)
    if second != _second[0]:
        _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_second[1]}.{int((moment - second) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id and `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()

    def formatException(self, ei: Any) -> str:
        """Where it failed (frames and exception types), never what it said: a message may quote patient data."""
        exc = ei[1]
        if exc is None:
            return ""
        chain: list[BaseException] = []
        while exc is not None and exc not in chain:
            chain.append(exc)
            exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        parts = []
        for failure in reversed(chain):
            frames = "".join(traceback.format_list(traceback.extract_tb(failure.__traceback__)))
            kind = type(failure)
            parts.append(f"Traceback (most recent call last):\n{frames}{kind.__module__}.{kind.__qualname__} "
                         "(message withheld from the log)")
        return "\nThe above exception led to:\n".join(parts)


_base_factory = logging.getLogRecordFactory()


def _record_with_request_id(*args: Any, **kwargs: Any) -> logging.LogRecord:
    """Stamp each record with the request id current when it was made (not when it is formatted)."""
    record = _base_factory(*args, **kwargs)
    record.request_id = request_id_var.get()
    return record


def configure_logging(level: str = "INFO") -> None:
    """Route the root logger to stderr as JSON lines (idempotent)."""
    logging.setLogRecordFactory(_record_with_request_id)
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.handlers = [handler]
    root.setLevel(level.upper())
    # The JSON lines carry none of these, and finding them costs more than writing a line (logging HOWTO,
    # "Optimization"): no caller frame lookup, no thread or process names.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # uvicorn's access log prints full URLs, whose query strings may hold patient ids; we log our own.
    logging.getLogger("uvicorn.access").disabled = True


class AccessLog:
    """The access log: one JSON line per request (method, route template, status, ms), written in batches.

    It is the one line every request writes, and through `logging` (a LogRecord, the handler lock, the
    formatter, a write and a flush per line) it cost about a tenth of a catalog read. When the logger's
    only destination is the JSON stream `configure_logging` sets up, the line (the same JSON object the
    formatter would write) is queued and the queue written by the event loop at most `delay` seconds later,
    when `batch` lines are waiting, and at exit. A process killed outright loses at most that last fraction
    of a second of access lines, never an error or an audit record. With any other handler attached
    (pytest's caplog, an operator's own logging configuration) the line goes through `logging` as before."""

    def __init__(self, name: str = "cicatrix.access", *, delay: float = 0.25, batch: int = 512) -> None:
        self.logger = logging.getLogger(name)
        self.delay = delay
        self.batch = batch
        self._lines: list[str] = []
        self._handler: logging.StreamHandler[Any] | None = None
        self._flush_loop: asyncio.AbstractEventLoop | None = None
        atexit.register(self.flush)

    def request(self, method: str, route: str, status: int, seconds: float, request_id: str | None,
                interaction: str | None = None) -> None:
        """One line; `interaction` is the FHIR interaction the edge parsed (`read`, `search-type`, ...)."""
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        ms = round(seconds * 1000, 2)
        named = {"interaction": interaction} if interaction else {}
        handler = _only_json_stream(logger)
        if handler is None:
            logger.info("request", extra={"method": method, "route": route, **named, "status": status, "ms": ms})
            return
        self._handler = handler
        entry = {"ts": timestamp(time.time()), "level": "info", "logger": logger.name, "msg": "request",
                 **({"request_id": request_id} if request_id else {}),
                 "method": method, "route": route, **named, "status": status, "ms": ms}
        self._lines.append(orjson.dumps(entry).decode())
        if len(self._lines) >= self.batch:
            self.flush()
        else:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop: nothing would come back to write the line later
                self.flush()
                return
            if self._flush_loop is not loop:  # none scheduled yet, or on a loop that has since stopped
                self._flush_loop = loop
                loop.call_later(self.delay, self.flush)

    def flush(self) -> None:
        self._flush_loop = None
        handler, lines = self._handler, self._lines
        if handler is None or not lines:
            return
        self._lines = []
        handler.acquire()
        try:
            handler.stream.write("\n".join(lines) + "\n")
            handler.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream must not fail requests, as with `logging`
            pass
        finally:
            handler.release()


def _only_json_stream(logger: logging.Logger) -> logging.StreamHandler[Any] | None:
    """The handler `configure_logging` installed, when it is the only one a record of `logger` would reach."""
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        found += current.handlers
        current = current.parent if current.propagate else None
    if len(found) != 1 or logger.filters:
        return None
    handler = found[0]
    if isinstance(handler, logging.StreamHandler) and isinstance(handler.formatter, JsonFormatter) \
            and handler.level <= logging.INFO and not handler.filters:
        return handler
    return None


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
"""The methods the metrics name; any other is counted as `_OTHER` (as OpenTelemetry's HTTP conventions do)."""

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the latency histogram's buckets; a last one, +Inf, takes the rest."""


class HttpMetrics(Collector):
    """Requests by route and status, and a latency histogram, in a registry of the app's own.

    The event loop that answers the requests counts them in plain dicts, turned into Prometheus families only
    when /metrics is scraped: prometheus_client's Counter and Histogram take a lock for every update (three a
    request), and the two together cost a cached catalog read about a tenth of its time.

    Every label has a bounded set of values: routes are templates (or `unmatched`), and a method outside
    `HTTP_METHODS` is `_OTHER`. The h11 server takes any token as a method, and a series per invented method
    would let clients grow the metrics, and this process, without end."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._answered: dict[tuple[str, str, int], int] = {}
        self._latency: dict[tuple[str, str], list[float]] = {}
        """Per (method, route): the count of each bucket of `LATENCY_BUCKETS` and of +Inf, then the sum."""
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        if method not in HTTP_METHODS:
            method = "_OTHER"
        answered = (method, route, status)
        self._answered[answered] = self._answered.get(answered, 0) + 1
        latency = self._latency.get((method, route))
        if latency is None:
            latency = self._latency[(method, route)] = [0] * (len(LATENCY_BUCKETS) + 1) + [0.0]
        latency[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # the first bucket whose bound is >= seconds
        latency[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        """The families, from copies of the counts (a copy of a dict is taken whole, whatever the loop does)."""
        labels = ["service", "method", "route"]
        answered = CounterMetricFamily("http_requests_total", "HTTP requests answered", labels=[*labels, "status"])
        for (method, route, status), count in list(self._answered.items()):
            answered.add_metric([self.service, method, route, str(status)], count)
        latency = HistogramMetricFamily("http_request_duration_seconds", "Time to answer an HTTP request",
                                        labels=labels)
        bounds = [*map(repr, LATENCY_BUCKETS), "+Inf"]
        for (method, route), counts in list(self._latency.items()):
            counts = list(counts)
            latency.add_metric([self.service, method, route],
                               list(zip(bounds, accumulate(counts[:-1]), strict=True)), sum_value=counts[-1])
        yield answered
        yield latency
