"""`GET /fhir/$ehr-capabilities`, /readyz and the Task when the EHR declares no safe way to deliver."""

from __future__ import annotations

import time

import pytest

from services.careplan.delivery.payloads import ReferenceRewriter, ehr_careplan, us_core_careplan
from tests.delivery.conftest import deliveries, delivery_settings, drain
from tests.delivery.factories import careplan, store_plan
from tests.delivery.us_core import assert_conforms, violations
from tests.support.apps import careplan_app, running

pytestmark = pytest.mark.sandbox


def parameters(answer: dict, name: str) -> list:
    return [p for p in answer["parameter"] if p["name"] == name]


def value(answer: dict, name: str):
    [parameter] = parameters(answer, name)
    return next(v for k, v in parameter.items() if k.startswith("value"))


@pytest.mark.parametrize("name, shape", [("hapi", "transaction"), ("oracle-millennium", "document"),
                                         ("us-core-notes", "document"), ("minimal", "individual")])
def test_ehr_capabilities_shows_the_request_plan_of_each_profile(tmp_path, ehr_sandbox, r4_validator, name, shape):
    ehr_sandbox.configure(profile=name)
    with running(careplan_app(f"sqlite:///{tmp_path}/careplan.db", EHR_BASE_URL=ehr_sandbox.base_url,
                              DISPATCHER="off")) as client:
        response = client.get("/fhir/$ehr-capabilities")
        ready = client.get("/readyz")

    assert response.status_code == 200, response.text
    answer = response.json()
    r4_validator.assert_valid(answer)
    assert (value(answer, "status"), value(answer, "shape")) == ("can-deliver", shape)
    requests = [tuple(part["valueString"] for part in p["part"]) for p in parameters(answer, "request")]
    assert ("first version", {"transaction": "POST / (transaction: POST CarePlan If-None-Exist: identifier=<plan "
                                             "identifier>, POST Provenance If-None-Exist: _tag=<delivery>)",
                              "individual": "POST CarePlan", "document": "POST DocumentReference"}[shape]) in requests
    fallbacks = " ".join(p["valueString"] for p in parameters(answer, "fallback"))
    if name != "hapi":
        assert "declares no Provenance create" in fallbacks
    if name == "us-core-notes":
        assert value(answer, "profile") == "http://hl7.org/fhir/us/core/StructureDefinition/us-core-documentreference"
        assert "replaces the previous one" in fallbacks
    assert ready.status_code == 200
    assert ehr_sandbox.refusals() == []


def test_an_ehr_without_a_safe_way_fails_the_task_naming_the_capability_and_readyz_reports_it(
        engine, database_url, ehr_sandbox, api, r4_validator):
    ehr_sandbox.configure(profile="minimal")
    plan = store_plan(engine)
    settings = delivery_settings(database_url, ehr_sandbox.base_url, EHR_DELIVERY="transaction")

    drain(settings, engine)

    [delivery] = deliveries(engine)
    assert delivery.state == "failed" and delivery.attempts == 1
    task = api.get(f"/fhir/Task/{delivery.id}").json()
    r4_validator.assert_valid(task)
    assert "no `transaction` interaction is declared" in task["statusReason"]["text"]
    assert [r for r in ehr_sandbox.requests() if r["path"] != "/fhir/metadata"] == []  # nothing sent to fail
    assert ehr_sandbox.store("CarePlan") == [] and plan.id
    ehr_sandbox.clear_requests()

    with running(careplan_app(database_url, EHR_BASE_URL=ehr_sandbox.base_url, EHR_DELIVERY="transaction",
                              DISPATCHER="off")) as client:
        deadline = time.monotonic() + 5  # the statement is read in the background at start
        while (ready := client.get("/readyz")).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        answer = client.get("/fhir/$ehr-capabilities").json()
    assert value(answer, "status") == "cannot-deliver"
    assert "no `transaction` interaction is declared" in value(answer, "missing")
    assert ready.status_code == 503
    assert "no `transaction` interaction is declared" in ready.json()["issue"][0]["diagnostics"]


def test_ehr_capabilities_says_the_statement_is_unreadable_when_the_ehr_is_down(tmp_path, r4_validator):
    with running(careplan_app(f"sqlite:///{tmp_path}/careplan.db", EHR_BASE_URL="http://127.0.0.1:9/fhir",
                              DISPATCHER="off", EHR_CONNECT_TIMEOUT_SECONDS=0.5)) as client:
        response = client.get("/fhir/$ehr-capabilities")
        ready = client.get("/readyz")

    assert response.status_code == 200
    r4_validator.assert_valid(response.json())
    assert value(response.json(), "status") == "unreadable"
    assert "could not be read" in value(response.json(), "error")
    assert ready.status_code == 200  # an EHR that is down is retried, not a reason to take this service out


def test_a_us_core_careplan_meets_the_profile_constraints(r4_validator):
    plan = careplan("plan-1") | {"id": "plan-1"}
    plan.pop("text")

    sent = us_core_careplan(ehr_careplan(plan, ReferenceRewriter(assessments={}, delivered_plans={})))

    r4_validator.assert_valid(sent)
    assert_conforms(sent, "CarePlan")
    assert violations(ehr_careplan(plan, ReferenceRewriter(assessments={}, delivered_plans={})), "CarePlan") == [
        "meta.profile: claims the profile it is sent for", "text: CarePlan.text 1..1 (Must Support)",
        "text.status: CarePlan.text.status 1..1, required binding US Core Narrative Status",
        "category:AssessPlan: CarePlan.category slice AssessPlan 1..1: "
        "http://hl7.org/fhir/us/core/CodeSystem/careplan-category#assess-plan"]
