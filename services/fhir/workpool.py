"""CPU work of requests (planning, validation, searches) in a bounded pool of worker threads.

The event loop answers every request of a process, `/healthz` included; a handler
that computes on it stalls them all. Handlers hand their CPU work to `WorkPool.run`
instead, which bounds three things:

- threads: at most WORK_THREADS pieces of work run at once, whatever the traffic;
- waiting: at most WORK_QUEUE more wait for a thread; beyond that a request is
  answered 503 with `Retry-After` at once instead of queueing without end;
- time: a request waits at most WORK_BUDGET_SECONDS for its work. Past it, the
  answer is 503 with `Retry-After` when the service was busy (the work waited, or
  ran only briefly), or 422 `too-costly` when the work itself ran for more than
  half the budget: then the input is the cause, and sending it again will not help.

Python cannot stop a thread, so work over budget runs on to its end and keeps its
thread meanwhile; the limits on input (services.fhir.limits) keep that end near.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from services.fhir.limits import LimitExceeded
from services.fhir.outcome import ServiceUnavailable
from services.fhir.settings import ServiceSettings

T = TypeVar("T")


def retry_after(budget_seconds: float) -> str:
    """Seconds a client refused for want of time within `budget_seconds` should wait: a fraction of the
    budget, at least one (the `Retry-After` of every 503 a time budget gives)."""
    return str(max(1, math.ceil(budget_seconds / 4)))


class WorkPool:
    def __init__(self, threads: int, queue: int, budget_seconds: float, *, setting_prefix: str = "") -> None:
        self.threads = threads
        self.queue = queue
        self.budget_seconds = budget_seconds
        self.prefix = setting_prefix
        self._executor = self._new_executor()
        self._lock = threading.Lock()
        self.waiting = 0
        self.running = 0

    def _new_executor(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="cicatrix-work")

    @classmethod
    def of(cls, settings: ServiceSettings) -> WorkPool:
        return cls(settings.WORK_THREADS, settings.WORK_QUEUE, settings.WORK_BUDGET_SECONDS,
                   setting_prefix=settings.model_config.get("env_prefix", ""))

    @property
    def retry_after(self) -> str:
        return retry_after(self.budget_seconds)

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in a worker thread (with the caller's context variables: the request id)."""
        with self._lock:
            if self.waiting >= self.queue:
                raise self._busy("every worker is busy and the queue is full")
            self.waiting += 1
        context = contextvars.copy_context()
        started: list[float] = []

        def job() -> T:
            with self._lock:
                self.waiting -= 1
                self.running += 1
            started.append(time.monotonic())
            try:
                return context.run(function, *args)
            finally:
                with self._lock:
                    self.running -= 1

        future = self._executor.submit(job)
        future.add_done_callback(self._never_started)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.budget_seconds)
        except TimeoutError:
            if future.cancel():  # it never got a thread
                raise self._busy("the work waited too long for a worker") from None
            ran = time.monotonic() - started[0] if started else 0.0
            if ran > self.budget_seconds / 2:
                raise LimitExceeded(f"This request needs more work than the {self.budget_seconds:g} s allowed "
                                    f"({self.prefix}WORK_BUDGET_SECONDS); send less (fewer answers, parameters "
                                    "or includes)") from None
            raise self._busy("the work did not finish within its time budget") from None

    def _never_started(self, future: Future[Any]) -> None:
        """Work cancelled before it got a thread (over budget, or its client went away) waits no more."""
        if future.cancelled():
            with self._lock:
                self.waiting -= 1

    def _busy(self, reason: str) -> ServiceUnavailable:
        return ServiceUnavailable(f"The service is busy ({reason}); try again shortly",
                                  headers={"Retry-After": self.retry_after})

    def shutdown(self) -> None:
        """Let the threads end once their work is done; an app started again gets new ones."""
        executor, self._executor = self._executor, self._new_executor()
        executor.shutdown(wait=False)
