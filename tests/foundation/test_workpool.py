"""The work pool bounds threads, waiting and time, and tells a busy service from a costly request."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from services.fhir.limits import LimitExceeded
from services.fhir.outcome import ServiceUnavailable
from services.fhir.workpool import WorkPool


def test_work_runs_in_a_worker_thread_with_the_callers_context():
    pool = WorkPool(threads=1, queue=4, budget_seconds=5)

    async def scenario() -> tuple[str, str]:
        return threading.current_thread().name, await pool.run(lambda: threading.current_thread().name)

    loop_thread, work_thread = asyncio.run(scenario())
    assert work_thread.startswith("cicatrix-work") and work_thread != loop_thread


def test_work_that_itself_runs_past_the_budget_is_422_naming_the_setting():
    pool = WorkPool(threads=1, queue=4, budget_seconds=0.2, setting_prefix="CAREPLAN_")
    with pytest.raises(LimitExceeded) as refused:
        asyncio.run(pool.run(time.sleep, 0.5))
    assert refused.value.status == 422 and "CAREPLAN_WORK_BUDGET_SECONDS" in refused.value.diagnostics


def test_work_that_waits_for_a_thread_past_the_budget_is_503_with_retry_after_and_waits_no_more():
    pool = WorkPool(threads=1, queue=4, budget_seconds=0.3)

    async def scenario() -> list[object]:
        return await asyncio.gather(pool.run(time.sleep, 0.6), pool.run(time.sleep, 0.01), return_exceptions=True)

    first, second = asyncio.run(scenario())
    assert isinstance(first, LimitExceeded)
    assert isinstance(second, ServiceUnavailable) and second.status == 503 and second.headers["Retry-After"]
    time.sleep(0.4)
    assert (pool.waiting, pool.running) == (0, 0)


def test_a_full_queue_is_503_at_once():
    pool = WorkPool(threads=1, queue=1, budget_seconds=5)

    async def scenario() -> list[object]:
        return await asyncio.gather(*(pool.run(time.sleep, 0.2) for _ in range(3)), return_exceptions=True)

    started = time.perf_counter()
    outcomes = asyncio.run(scenario())
    assert sum(isinstance(o, ServiceUnavailable) for o in outcomes) >= 1
    assert time.perf_counter() - started < 2
