"""Restricted capability profiles: what the sandbox advertises is what it enforces."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.sandbox

FHIR_JSON = {"content-type": "application/fhir+json"}
PLAN = {"resourceType": "CarePlan", "status": "draft", "intent": "plan", "subject": {"reference": "Patient/p1"}}


def rest(sandbox) -> dict:
    return httpx.get(f"{sandbox.base_url}/metadata").json()["rest"][0]


def test_no_transaction_advertises_and_enforces_batch_only(ehr_sandbox):
    ehr_sandbox.configure(profile="no-transaction")

    assert {i["code"] for i in rest(ehr_sandbox)["interaction"]} == {"batch"}
    answer = httpx.post(ehr_sandbox.base_url, headers=FHIR_JSON,
                        json={"resourceType": "Bundle", "type": "transaction", "entry": []})
    assert answer.status_code == 405
    assert httpx.post(f"{ehr_sandbox.base_url}/CarePlan", json=PLAN, headers=FHIR_JSON).status_code == 201


def test_no_careplan_write_refuses_careplans_but_takes_documents_and_provenance(ehr_sandbox):
    ehr_sandbox.configure(profile="no-careplan-write")

    resources = {r["type"]: r for r in rest(ehr_sandbox)["resource"]}
    assert "create" not in {i["code"] for i in resources["CarePlan"]["interaction"]}
    assert "create" in {i["code"] for i in resources["DocumentReference"]["interaction"]}
    assert "create" in {i["code"] for i in resources["Provenance"]["interaction"]}
    assert not rest(ehr_sandbox).get("interaction")
    assert httpx.post(f"{ehr_sandbox.base_url}/CarePlan", json=PLAN, headers=FHIR_JSON).status_code == 405


def test_reset_restores_the_full_profile_and_unknown_profiles_are_refused(ehr_sandbox):
    ehr_sandbox.configure(profile="no-transaction")
    ehr_sandbox.reset()

    assert {i["code"] for i in rest(ehr_sandbox)["interaction"]} == {"transaction", "batch"}
    refused = httpx.post(f"{ehr_sandbox.control_url}/config", json={"profile": "read-only-ish"})
    assert refused.status_code == 400 and "no-careplan-write" in refused.json()["error"]
