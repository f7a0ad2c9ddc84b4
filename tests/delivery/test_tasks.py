"""The Task view of deliveries: search by focus, read, `$retry`, and the 400-with-OperationOutcome case."""

from __future__ import annotations

import pytest

from tests.delivery.conftest import deliveries, delivery_settings, drain, identifiers_in_ehr
from tests.delivery.factories import store_plan

pytestmark = pytest.mark.sandbox

REJECTION = {"resourceType": "OperationOutcome", "issue": [{
    "severity": "error", "code": "invalid",
    "diagnostics": "CarePlan.activity[0].detail.code: not in this EHR's catalog",
    "expression": ["CarePlan.activity[0].detail.code"]}]}


def tasks_for(api, plan_id: str, **params) -> list[dict]:
    response = api.get("/fhir/Task", params={"focus": f"CarePlan/{plan_id}", **params})
    assert response.status_code == 200, response.text
    assert response.json()["type"] == "searchset"
    return [e["resource"] for e in response.json().get("entry", []) if e["search"]["mode"] == "match"]


def test_400_with_outcome_fails_the_task_keeps_the_reason_and_retry_delivers(engine, database_url, ehr_sandbox,
                                                                           api, r4_validator):
    plan = store_plan(engine)
    ehr_sandbox.queue_fault(action="status", status=400, outcome=REJECTION, match={"method": "POST", "path": "/fhir"})
    settings = delivery_settings(database_url, ehr_sandbox.base_url)

    drain(settings, engine)

    assert ehr_sandbox.store("CarePlan") == []
    [task] = tasks_for(api, plan.id)
    r4_validator.assert_valid(task)
    assert task["status"] == "failed"
    assert "not in this EHR's catalog" in task["statusReason"]["text"]
    assert "400" in task["statusReason"]["text"]
    assert task["contained"][0]["issue"] == REJECTION["issue"]
    assert {"reference": "#ehr-outcome"} in [o.get("valueReference") for o in task["output"]]
    assert len([r for r in ehr_sandbox.requests() if r["method"] == "POST"]) == 1  # a 400 is never retried

    retried = api.post(f"/fhir/Task/{task['id']}/$retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] == "requested"
    drain(settings, engine)

    assert identifiers_in_ehr(ehr_sandbox) == [plan.parsed()["identifier"][0]["value"]]
    [done] = tasks_for(api, plan.id)
    r4_validator.assert_valid(done)
    assert done["status"] == "completed" and "statusReason" not in done
    ehr_refs = [o["valueReference"]["reference"] for o in done["output"] if "valueReference" in o]
    assert ehr_refs[0] == f"{ehr_sandbox.base_url}/CarePlan/{ehr_sandbox.store('CarePlan')[0]['id']}/_history/1"
    again = api.post(f"/fhir/Task/{task['id']}/$retry")
    assert again.status_code == 409
    assert again.json()["resourceType"] == "OperationOutcome"


def test_task_shows_queued_retry_scheduled_and_is_readable_with_etag(engine, database_url, ehr_sandbox, api,
                                                                      r4_validator):
    plan = store_plan(engine)
    [queued] = tasks_for(api, plan.id)
    r4_validator.assert_valid(queued)
    assert queued["status"] == "requested"
    assert queued["focus"] == {"reference": f"CarePlan/{plan.id}"}
    assert queued["input"][0]["valueReference"] == {"reference": f"CarePlan/{plan.id}/_history/1"}
    assert queued["for"] == {"reference": "Patient/p1"}
    assert queued["restriction"]["repetitions"] == 12

    ehr_sandbox.queue_fault(action="status", status=503, times=100, match={"method": "POST", "path": "/fhir"})
    drain(delivery_settings(database_url, ehr_sandbox.base_url, DELIVERY_MAX_ATTEMPTS=2), engine)
    [failed] = tasks_for(api, plan.id, status="failed")
    assert "gave up after 2 attempt(s)" in failed["statusReason"]["text"]
    assert tasks_for(api, plan.id, status="completed") == []

    read = api.get(f"/fhir/Task/{failed['id']}")
    assert read.status_code == 200 and read.json() == failed
    assert api.get(f"/fhir/Task/{failed['id']}", headers={"If-None-Match": read.headers["etag"]}).status_code == 304
    assert api.get("/fhir/Task/no-such-task").status_code == 404


def test_retry_scheduled_task_is_in_progress_with_attempts_and_next_time(engine, database_url, ehr_sandbox, api,
                                                                         r4_validator):
    from sqlmodel import Session

    from services.careplan.delivery.outbox import Delivery
    from services.fhir.store import utcnow

    plan = store_plan(engine)
    [row] = deliveries(engine)
    with Session(engine) as session:
        delivery = session.get(Delivery, row.id)
        delivery.attempts, delivery.last_error = 3, "the EHR answered 503 to POST /: busy"
        delivery.next_attempt_at = utcnow()
        session.add(delivery)
        session.commit()

    [task] = tasks_for(api, plan.id, status="in-progress")
    r4_validator.assert_valid(task)
    assert task["businessStatus"]["coding"][0]["code"] == "retry-scheduled"
    assert "attempts: 3 of 12" in task["businessStatus"]["text"]
    assert "next attempt at" in task["businessStatus"]["text"]


def test_capability_statement_lists_task_and_careplan_updates(api):
    resources = {r["type"]: r for r in api.get("/fhir/metadata").json()["rest"][0]["resource"]}

    assert {i["code"] for i in resources["Task"]["interaction"]} == {"read", "search-type"}
    assert resources["Task"]["operation"][0]["name"] == "retry"
    assert {"update", "patch"} <= {i["code"] for i in resources["CarePlan"]["interaction"]}


def test_metrics_show_backlog_and_outcomes(engine, database_url, ehr_sandbox, api):
    store_plan(engine)
    store_plan(engine)
    text = api.get("/metrics").text
    assert "careplan_delivery_backlog 2.0" in text
    assert "careplan_delivery_oldest_pending_age_seconds" in text

    drain(delivery_settings(database_url, ehr_sandbox.base_url), engine)
    assert "careplan_delivery_backlog 0.0" in api.get("/metrics").text


def test_a_plan_has_one_task_per_version_and_total_counts_them_all(engine, ehr_sandbox, api):
    plan = store_plan(engine)
    current = api.get(f"/fhir/CarePlan/{plan.id}").json()
    api.put(f"/fhir/CarePlan/{plan.id}", json=current | {"status": "active"},
            headers={"content-type": "application/fhir+json", "If-Match": 'W/"1"'})

    page = api.get("/fhir/Task", params={"focus": f"CarePlan/{plan.id}", "_count": "1"}).json()

    assert page["total"] == 2 and len(page["entry"]) == 1
    assert page["entry"][0]["resource"]["input"][0]["valueReference"]["reference"].endswith("/_history/1")
    both = tasks_for(api, plan.id)
    assert [t["description"].split(" of ")[0] for t in both] == ["Deliver version 1", "Deliver version 2"]
