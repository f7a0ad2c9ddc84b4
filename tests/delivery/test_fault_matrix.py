"""The delivery fault matrix: whatever the EHR does, it ends with exactly one copy of each plan.

Each case runs on SQLite and PostgreSQL against the real EHR sandbox over HTTP, and checks both ends:
the EHR's store (one CarePlan per plan identifier, one Provenance per delivery) and the Task state.
"""

from __future__ import annotations

import time

import pytest

from tests.delivery.conftest import deliveries, delivery_settings, drain, identifiers_in_ehr
from tests.delivery.factories import store_plan

pytestmark = pytest.mark.sandbox

TRANSACTION = {"method": "POST", "path": "/fhir"}


def fhir_posts(sandbox, path: str = "/fhir") -> list[dict]:
    return [r for r in sandbox.requests() if r["method"] == "POST" and r["path"] == path]


def assert_delivered_once(sandbox, plans, r4_validator=None) -> None:
    expected = sorted(p.parsed()["identifier"][0]["value"] for p in plans)
    assert sorted(identifiers_in_ehr(sandbox)) == expected
    assert len(sandbox.store("Provenance")) == len(plans)


def test_a_plan_is_delivered_as_one_transaction_with_its_provenance(engine, database_url, ehr_sandbox,
                                                                    r4_validator):
    plan = store_plan(engine, author="Practitioner/dr-lee")

    drain(delivery_settings(database_url, ehr_sandbox.base_url), engine)

    assert_delivered_once(ehr_sandbox, [plan])
    [bundle_request] = fhir_posts(ehr_sandbox)
    bundle = bundle_request["body"]
    r4_validator.assert_valid(bundle)
    careplan_entry, provenance_entry = bundle["entry"]
    assert careplan_entry["request"]["ifNoneExist"].startswith("identifier=https://fhir.cicatrix.org/careplan-id|")
    assert careplan_entry["fullUrl"].startswith("urn:uuid:")
    assert provenance_entry["resource"]["target"] == [{"reference": careplan_entry["fullUrl"]}]
    assert provenance_entry["request"]["ifNoneExist"].startswith("_tag=https://fhir.cicatrix.org/delivery|")
    agents = [a["who"] for a in provenance_entry["resource"]["agent"]]
    assert agents[0]["type"] == "Device" and agents[1] == {"reference": "Practitioner/dr-lee"}
    entities = {e["role"]: e["what"] for e in provenance_entry["resource"]["entity"]}
    assert entities["source"]["identifier"]["system"] == "https://hospital.example.org/assessment"
    assert "atrophic-scar-protocol" in entities["derivation"]["identifier"]["value"]
    [stored] = ehr_sandbox.store("CarePlan")
    assert stored["supportingInfo"][0]["identifier"]["system"] == "https://hospital.example.org/assessment"
    assert stored["activity"][0]["detail"]["productReference"]["identifier"] == {
        "system": "https://fhir.cicatrix.org/Medication", "value": "mederma-gel"}
    [prov] = ehr_sandbox.store("Provenance")
    assert prov["target"] == [{"reference": f"CarePlan/{stored['id']}"}]
    [delivery] = deliveries(engine)
    assert delivery.state == "completed" and delivery.shape == "transaction"
    assert delivery.ehr_id == stored["id"] and delivery.ehr_version == "1"
    assert delivery.outputs() == [f"CarePlan/{stored['id']}/_history/1", f"Provenance/{prov['id']}/_history/1"]
    assert delivery.dropped_elements() == []


def test_ehr_down_at_first_then_up_delivers_once(engine, database_url, r4_validator):
    import asyncio
    import socket

    from services.careplan.delivery.dispatcher import Dispatcher, run_until_idle
    from tests.support.sandbox import EhrSandbox, start_sandbox, stop_sandbox

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = delivery_settings(database_url, f"http://127.0.0.1:{port}/fhir", DELIVERY_MAX_ATTEMPTS=200)
    plan = store_plan(engine)
    started: list = []

    async def bring_up_after_failures() -> None:
        while not (deliveries(engine)[0].attempts >= 3):
            await asyncio.sleep(0.05)
        started.append(await asyncio.to_thread(start_sandbox, {"EHR_SANDBOX_PORT": str(port)}))

    async def go() -> None:
        dispatcher = Dispatcher(settings, engine)
        try:
            await asyncio.gather(bring_up_after_failures(), run_until_idle(dispatcher, 30))
        finally:
            await dispatcher.close()

    try:
        asyncio.run(go())
        sandbox = EhrSandbox(started[0])
        assert_delivered_once(sandbox, [plan])
        sandbox.close()
    finally:
        for proc in started:
            stop_sandbox(proc)
    [delivery] = deliveries(engine)
    assert delivery.state == "completed" and delivery.attempts >= 4


def test_503_three_times_then_success(engine, database_url, ehr_sandbox):
    plan = store_plan(engine)
    ehr_sandbox.queue_fault(action="status", status=503, times=3, match=TRANSACTION)

    drain(delivery_settings(database_url, ehr_sandbox.base_url), engine)

    assert_delivered_once(ehr_sandbox, [plan])
    assert [r["status"] for r in fhir_posts(ehr_sandbox)] == [503, 503, 503, 200]
    [delivery] = deliveries(engine)
    assert (delivery.state, delivery.attempts) == ("completed", 4)


def test_429_with_retry_after_is_waited_for(engine, database_url, ehr_sandbox):
    from datetime import datetime

    plan = store_plan(engine)
    ehr_sandbox.queue_fault(action="status", status=429, retry_after="1", match=TRANSACTION)

    drain(delivery_settings(database_url, ehr_sandbox.base_url), engine)

    assert_delivered_once(ehr_sandbox, [plan])
    throttled, accepted = fhir_posts(ehr_sandbox)
    assert (throttled["status"], accepted["status"]) == (429, 200)
    waited = (datetime.fromisoformat(accepted["time"]) - datetime.fromisoformat(throttled["time"])).total_seconds()
    assert 1.0 <= waited < 2.0  # Retry-After: 1 honoured although the backoff alone is 50 ms
    [delivery] = deliveries(engine)
    assert (delivery.state, delivery.attempts) == ("completed", 2)


def test_dropped_connection_is_searched_then_resent_once(engine, database_url, ehr_sandbox):
    plan = store_plan(engine)
    ehr_sandbox.queue_fault(action="drop", match=TRANSACTION)

    drain(delivery_settings(database_url, ehr_sandbox.base_url), engine)

    assert_delivered_once(ehr_sandbox, [plan])
    log = ehr_sandbox.requests()
    searches = [r for r in log if r["method"] == "GET" and r["path"] == "/fhir/CarePlan"]
    assert len(searches) == 1  # search-before-resend after the ambiguous drop
    assert [r["dropped"] for r in fhir_posts(ehr_sandbox)] == [True, False]


def test_slow_ehr_beyond_the_timeout_ends_with_one_copy(engine, database_url, ehr_sandbox):
    plan = store_plan(engine)
    ehr_sandbox.queue_fault(action="delay", delay_ms=900, match=TRANSACTION)

    drain(delivery_settings(database_url, ehr_sandbox.base_url, EHR_TIMEOUT_SECONDS=0.3), engine)
    deadline = time.monotonic() + 3
    while any(r["status"] is None for r in fhir_posts(ehr_sandbox)) and time.monotonic() < deadline:
        time.sleep(0.05)  # let the slow request finish too: it must not add a second copy

    assert all(r["status"] == 200 for r in fhir_posts(ehr_sandbox))
    assert len(fhir_posts(ehr_sandbox)) == 2
    assert_delivered_once(ehr_sandbox, [plan])
    [delivery] = deliveries(engine)
    assert (delivery.state, delivery.attempts) == ("completed", 2)


@pytest.mark.parametrize("lost", ["500", "drop"])
def test_apply_then_fail_is_found_by_the_search_and_not_resent(engine, database_url, ehr_sandbox, lost):
    plan = store_plan(engine)
    fault = {"drop": True} if lost == "drop" else {"status": 500}
    ehr_sandbox.queue_fault(action="apply-then-fail", match=TRANSACTION, **fault)

    drain(delivery_settings(database_url, ehr_sandbox.base_url), engine)

    assert_delivered_once(ehr_sandbox, [plan])
    assert len(fhir_posts(ehr_sandbox)) == 1  # never sent again: the search found plan and Provenance
    [delivery] = deliveries(engine)
    assert (delivery.state, delivery.attempts) == ("completed", 2)
    assert delivery.ehr_id == ehr_sandbox.store("CarePlan")[0]["id"]


def test_ehr_without_transactions_gets_individual_conditional_creates(engine, database_url, ehr_sandbox):
    ehr_sandbox.configure(profile="no-transaction")
    plan = store_plan(engine)

    drain(delivery_settings(database_url, ehr_sandbox.base_url), engine)

    assert_delivered_once(ehr_sandbox, [plan])
    writes = [(r["method"], r["path"]) for r in ehr_sandbox.requests() if r["method"] != "GET"]
    assert writes == [("POST", "/fhir/CarePlan"), ("POST", "/fhir/Provenance")]
    careplan_post = fhir_posts(ehr_sandbox, "/fhir/CarePlan")[0]
    assert careplan_post["headers"]["if-none-exist"].startswith("identifier=https://fhir.cicatrix.org/careplan-id|")
    [delivery] = deliveries(engine)
    assert (delivery.state, delivery.shape) == ("completed", "individual")
