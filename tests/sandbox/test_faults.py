"""The fault queue: failures the reliability tests inject on cue (POST /_control/faults)."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.sandbox.conftest import careplan

pytestmark = pytest.mark.sandbox

CRITERIA = {"If-None-Exist": "identifier=https://example.org/fhir/careplan-id|assessment-qr1"}


def test_status_fault_answers_with_retry_after_and_an_outcome_without_processing(ehr_sandbox, fhir):
    ehr_sandbox.queue_fault(action="status", status=503, retry_after="2", match={"method": "POST", "path": "/fhir"})

    response = fhir.post("/CarePlan", careplan())

    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "transient"
    assert ehr_sandbox.store() == []


def test_status_fault_is_used_up_after_times_requests(ehr_sandbox, fhir):
    ehr_sandbox.queue_fault(action="status", status=429, retry_after="1", times=2)

    codes = [fhir.post("/CarePlan", careplan(), headers=CRITERIA).status_code for _ in range(3)]

    assert codes == [429, 429, 201]
    assert ehr_sandbox.faults() == []


def test_status_fault_can_carry_a_given_operation_outcome(fhir, ehr_sandbox):
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "business-rule", "diagnostics": "CarePlan writes are closed"}],
    }
    ehr_sandbox.queue_fault(action="status", status=422, outcome=outcome)

    response = fhir.post("/CarePlan", careplan())

    assert response.status_code == 422
    assert response.json() == outcome


def test_faults_are_taken_in_fifo_order(ehr_sandbox, fhir):
    ehr_sandbox.queue_fault(action="status", status=429)
    ehr_sandbox.queue_fault(action="status", status=503)

    codes = [fhir.get("/CarePlan").status_code for _ in range(3)]

    assert codes == [429, 503, 200]


def test_faults_only_hit_requests_matching_method_and_path_prefix(ehr_sandbox, fhir):
    ehr_sandbox.queue_fault(action="status", status=500, match={"method": "POST", "path": "/fhir/Provenance"})

    assert fhir.get("/Provenance").status_code == 200
    assert fhir.post("/CarePlan", careplan()).status_code == 201
    assert len(ehr_sandbox.faults()) == 1
    assert fhir.post("/Provenance", {"resourceType": "Provenance"}).status_code == 500
    assert ehr_sandbox.faults() == []


def test_delay_fault_waits_then_processes_normally(ehr_sandbox, fhir):
    ehr_sandbox.queue_fault(action="delay", delay_ms=600)

    started = time.monotonic()
    response = fhir.post("/CarePlan", careplan())
    elapsed = time.monotonic() - started

    assert response.status_code == 201
    assert elapsed >= 0.55
    assert len(ehr_sandbox.store("CarePlan")) == 1


def test_delay_fault_longer_than_the_client_timeout_looks_like_a_timeout(ehr_sandbox, fhir):
    ehr_sandbox.queue_fault(action="delay", delay_ms=1500)

    with pytest.raises(httpx.ReadTimeout):
        fhir.post("/CarePlan", careplan(), timeout=0.3)


def test_drop_fault_closes_the_connection_without_answering_or_processing(ehr_sandbox, fhir):
    ehr_sandbox.queue_fault(action="drop", match={"method": "POST"})

    with pytest.raises(httpx.RemoteProtocolError):
        fhir.post("/CarePlan", careplan())

    assert ehr_sandbox.store() == []
    assert fhir.post("/CarePlan", careplan()).status_code == 201


def test_apply_then_fail_stores_the_resource_but_answers_500(ehr_sandbox, fhir):
    ehr_sandbox.queue_fault(action="apply-then-fail", match={"method": "POST", "path": "/fhir"})

    response = fhir.post("", _transaction())

    assert response.status_code == 500
    assert response.json()["resourceType"] == "OperationOutcome"
    assert len(ehr_sandbox.store("CarePlan")) == 1
    assert len(ehr_sandbox.store("Provenance")) == 1


def test_apply_then_fail_then_a_conditional_retry_finds_the_stored_plan(ehr_sandbox, fhir):
    ehr_sandbox.queue_fault(action="apply-then-fail", status=503, retry_after="1")

    failed = fhir.post("", _transaction())
    retried = fhir.post("", _transaction())

    assert failed.status_code == 503
    assert failed.headers["retry-after"] == "1"
    assert [e["response"]["status"] for e in retried.json()["entry"]] == ["200 OK", "200 OK"]
    assert len(ehr_sandbox.store("CarePlan")) == 1


def test_apply_then_fail_can_drop_the_connection_after_storing(ehr_sandbox, fhir):
    ehr_sandbox.queue_fault(action="apply-then-fail", drop=True)

    with pytest.raises(httpx.RemoteProtocolError):
        fhir.post("/CarePlan", careplan())

    assert len(ehr_sandbox.store("CarePlan")) == 1


def test_pending_faults_can_be_listed_and_cleared(ehr_sandbox, fhir):
    ehr_sandbox.queue_fault(action="status", status=503, times=3)

    [pending] = ehr_sandbox.faults()
    assert pending["action"] == "status"
    assert pending["times"] == 3
    ehr_sandbox.clear_faults()
    assert ehr_sandbox.faults() == []
    assert fhir.get("/CarePlan").status_code == 200


@pytest.mark.parametrize(
    "fault",
    [
        {"action": "explode"},
        {"action": "status"},
        {"action": "delay"},
        {"action": "status", "status": 503, "times": 0},
        {"action": "status", "status": 503, "outcome": {"resourceType": "Patient"}},
    ],
)
def test_a_malformed_fault_is_refused_and_nothing_is_queued(ehr_sandbox, fault):
    response = httpx.post(f"{ehr_sandbox.control_url}/faults", json={"faults": [{"action": "drop"}, fault]})

    assert response.status_code == 400
    assert response.json()["error"]
    assert ehr_sandbox.faults() == []


def test_faults_never_touch_the_control_api(ehr_sandbox):
    ehr_sandbox.queue_fault(action="drop")

    assert ehr_sandbox.store() == []
    assert len(ehr_sandbox.faults()) == 1


def _transaction():
    from tests.sandbox.conftest import delivery_transaction

    return delivery_transaction()


def test_a_request_still_delayed_when_the_sandbox_is_reset_is_dropped_not_applied(ehr_sandbox, fhir):
    ehr_sandbox.queue_fault(action="delay", delay_ms=400)
    with pytest.raises(httpx.ReadTimeout):
        fhir.post("/CarePlan", careplan(), timeout=0.1)

    ehr_sandbox.reset()
    time.sleep(0.6)

    assert ehr_sandbox.store() == []
