"""The dispatcher wakes at once for new work: NOTIFY on PostgreSQL, a direct poke in-process; the embedded one."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.careplan.delivery.dispatcher import Dispatcher
from tests.delivery.conftest import deliveries, delivery_settings, identifiers_in_ehr
from tests.delivery.factories import store_plan

pytestmark = pytest.mark.sandbox

SLOW_POLL = {"DELIVERY_POLL_SECONDS": 30.0}


def test_a_waiting_dispatcher_on_postgresql_is_woken_by_notify(pg_engine, ehr_sandbox):
    database_url, engine = pg_engine
    dispatcher = Dispatcher(delivery_settings(database_url, ehr_sandbox.base_url, **SLOW_POLL), engine)

    async def go() -> float:
        runner = asyncio.create_task(dispatcher.run())
        await asyncio.sleep(0.5)  # idle, sleeping up to 30 s
        stored = time.monotonic()
        await asyncio.to_thread(store_plan, engine)  # commits with NOTIFY; no in-process poke
        while deliveries(engine)[0].state != "completed":
            await asyncio.sleep(0.02)
        waited = time.monotonic() - stored
        dispatcher.stop()
        await runner
        await dispatcher.close()
        return waited

    assert asyncio.run(go()) < 3


def test_the_embedded_dispatcher_delivers_new_plans_and_status_changes_at_once(engine, database_url, ehr_sandbox):
    from services.careplan.app import create_app
    from tests.support.apps import running

    settings = delivery_settings(database_url, ehr_sandbox.base_url, DISPATCHER="embedded", **SLOW_POLL)
    app = create_app(settings)
    with running(app) as api:
        plan = store_plan(engine, hooks=app.state.ctx.extras["plan_hooks"])  # commit pokes the dispatcher

        task = wait_for_task(api, plan.id, "completed")
        assert task["businessStatus"]["coding"][0]["code"] == "delivered"

        current = api.get(f"/fhir/CarePlan/{plan.id}").json()
        response = api.put(f"/fhir/CarePlan/{plan.id}", json=current | {"status": "active"},
                           headers={"content-type": "application/fhir+json", "If-Match": 'W/"1"'})
        assert response.status_code == 200
        wait_for_task(api, plan.id, "completed", count=2)
        metrics = api.get("/metrics").text
    assert ehr_sandbox.store("CarePlan")[0]["status"] == "active"
    assert identifiers_in_ehr(ehr_sandbox) == [plan.id]
    assert 'careplan_deliveries_total{outcome="completed"} 2.0' in metrics
    assert 'careplan_delivery_attempts_total{result="delivered"} 2.0' in metrics
    assert "careplan_delivery_latency_seconds_count 2.0" in metrics


def wait_for_task(api, plan_id: str, status: str, *, count: int = 1, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        tasks = [e["resource"] for e in api.get("/fhir/Task", params={"focus": f"CarePlan/{plan_id}"}).json()
                 .get("entry", [])]
        done = [t for t in tasks if t["status"] == status]
        if len(done) >= count:
            return done[-1]
        assert time.monotonic() < deadline, tasks
        time.sleep(0.05)
