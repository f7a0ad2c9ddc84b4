"""A live worker keeps what it claimed: an attempt slower than the lease is never taken over and sent twice.

The lease is what brings a dead worker's rows back; a worker still working renews it every third of
the lease. Here every EHR answer takes longer than the whole lease, and a second worker stands by
to take over anything whose lease lapses.
"""

from __future__ import annotations

import asyncio

import pytest

from services.careplan.delivery.dispatcher import Dispatcher, run_until_idle
from tests.delivery.conftest import deliveries, delivery_settings
from tests.delivery.factories import bulk_plans
from tests.delivery.test_processes import assert_each_once, transactions

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


def test_an_attempt_slower_than_its_lease_is_sent_once_beside_a_second_worker(engine, database_url, ehr_sandbox):
    plans = bulk_plans(engine, 4)
    ehr_sandbox.configure(latency_ms=1500)
    settings = delivery_settings(database_url, ehr_sandbox.base_url, DELIVERY_LEASE_SECONDS=0.6,
                                 EHR_TIMEOUT_SECONDS=5.0, DELIVERY_BATCH_SIZE=4)

    async def go() -> None:
        workers = [Dispatcher(settings, engine, worker=name) for name in ("first", "second")]
        try:
            await asyncio.gather(*(run_until_idle(worker, 60) for worker in workers))
        finally:
            for worker in workers:
                await worker.close()

    asyncio.run(go())
    ehr_sandbox.configure(latency_ms=0)
    assert_each_once(ehr_sandbox, plans)
    assert len(transactions(ehr_sandbox)) == len(plans)  # not one request sent twice
    assert not any(d.ambiguous for d in deliveries(engine)), "no lease lapsed while its worker lived"
    assert all(d.state == "completed" for d in deliveries(engine))
