"""The control API besides faults: request log, store view, reset and runtime config."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.sandbox.conftest import Fhir, careplan, delivery_transaction

pytestmark = pytest.mark.sandbox


def test_request_log_records_method_path_query_body_and_status(ehr_sandbox, fhir):
    fhir.post("/CarePlan", careplan(), headers={"If-None-Exist": "identifier=a|b"})
    fhir.get("/CarePlan", params={"status": "active", "_count": "5"})

    created, searched = ehr_sandbox.requests()

    assert created["method"] == "POST"
    assert created["path"] == "/fhir/CarePlan"
    assert created["body"] == careplan()
    assert created["headers"]["if-none-exist"] == "identifier=a|b"
    assert created["status"] == 201
    assert created["time"]
    assert searched["query"] == {"status": ["active"], "_count": ["5"]}
    assert searched["body"] is None
    assert searched["status"] == 200


def test_request_log_redacts_authorization_to_its_scheme(ehr_sandbox):
    ehr_sandbox.configure(token="s3cret")
    client = Fhir(ehr_sandbox.base_url, token="s3cret")

    client.get("/CarePlan")

    [entry] = ehr_sandbox.requests()
    assert entry["headers"]["authorization"] == "Bearer"
    assert "s3cret" not in str(entry)


def test_request_log_shows_faults_and_dropped_connections(ehr_sandbox, fhir):
    ehr_sandbox.queue_fault(action="status", status=503)
    ehr_sandbox.queue_fault(action="drop")
    fhir.post("", delivery_transaction())
    with pytest.raises(httpx.RemoteProtocolError):
        fhir.post("", delivery_transaction())

    answered, dropped = ehr_sandbox.requests()

    assert (answered["status"], answered["fault"], answered["dropped"]) == (503, "status", False)
    assert (dropped["status"], dropped["fault"], dropped["dropped"]) == (None, "drop", True)
    assert dropped["body"]["type"] == "transaction"


def test_request_log_can_be_cleared_and_never_lists_control_calls(ehr_sandbox, fhir):
    fhir.get("/CarePlan")
    ehr_sandbox.store()

    assert [r["path"] for r in ehr_sandbox.requests()] == ["/fhir/CarePlan"]
    ehr_sandbox.clear_requests()
    assert ehr_sandbox.requests() == []


def test_store_lists_current_versions_optionally_by_type(ehr_sandbox, fhir):
    fhir.post("", delivery_transaction())
    plan = ehr_sandbox.store("CarePlan")[0]
    fhir.put(f"/CarePlan/{plan['id']}", {**plan, "status": "completed"})

    everything = ehr_sandbox.store()

    assert sorted(r["resourceType"] for r in everything) == ["CarePlan", "Provenance"]
    [current] = ehr_sandbox.store("CarePlan")
    assert (current["status"], current["meta"]["versionId"]) == ("completed", "2")
    assert ehr_sandbox.store("Patient") == []


def test_reset_empties_store_faults_log_and_restores_config(ehr_sandbox, fhir):
    fhir.post("/CarePlan", careplan())
    ehr_sandbox.queue_fault(action="status", status=503)
    ehr_sandbox.configure(token="t", latency_ms=5)

    ehr_sandbox.reset()

    assert ehr_sandbox.store() == []
    assert ehr_sandbox.faults() == []
    assert ehr_sandbox.requests() == []
    assert ehr_sandbox.configure() == {"token": None, "latencyMs": 0}
    assert fhir.get("/CarePlan").json()["total"] == 0


def test_configured_latency_delays_every_fhir_request_but_not_the_control_api(ehr_sandbox, fhir):
    ehr_sandbox.configure(latency_ms=300)

    started = time.monotonic()
    assert fhir.get("/CarePlan").status_code == 200
    fhir_elapsed = time.monotonic() - started
    started = time.monotonic()
    ehr_sandbox.store()
    control_elapsed = time.monotonic() - started

    assert fhir_elapsed >= 0.28
    assert control_elapsed < 0.28


@pytest.mark.parametrize(
    "config", [{"latencyMs": -1}, {"token": ""}, {"latency_ms": 5}, {"token": "t", "latencyMs": "x"}]
)
def test_invalid_config_is_refused_and_changes_nothing(ehr_sandbox, config):
    response = httpx.post(f"{ehr_sandbox.control_url}/config", json=config)

    assert response.status_code == 400
    assert ehr_sandbox.configure() == {"token": None, "latencyMs": 0}


def test_unknown_control_routes_are_404(ehr_sandbox):
    assert httpx.get(f"{ehr_sandbox.control_url}/nothing").status_code == 404
    assert httpx.put(f"{ehr_sandbox.control_url}/faults").status_code == 405


def test_paths_outside_fhir_and_control_are_404_operation_outcomes(ehr_sandbox):
    response = httpx.get(f"{ehr_sandbox.root_url}/somewhere")

    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"
