"""The `hapi` profile (the default; `full` is its alias): a HAPI FHIR-like full server."""

from __future__ import annotations

import httpx
import pytest

from tests.sandbox.conftest import careplan, codes, declared_resources, delivery_transaction, valid_statement

pytestmark = pytest.mark.sandbox

EVERY_INTERACTION = {"read", "vread", "update", "delete", "history-instance", "create", "search-type"}


def test_hapi_is_the_default_and_full_selects_it(ehr_sandbox, fhir):
    default = fhir.get("/metadata").json()

    assert "profile" not in ehr_sandbox.configure(profile="full")
    assert '"hapi"' in default["implementation"]["description"]
    assert fhir.get("/metadata").json()["implementation"] == default["implementation"]


def test_hapi_declares_bundles_every_interaction_and_conditional_operations_on_every_type(fhir, assert_r4):
    statement = valid_statement(fhir, assert_r4)
    resources = declared_resources(fhir)

    assert codes(statement["rest"][0]["interaction"]) == {"transaction", "batch"}
    assert len(resources) > 140  # every R4 resource type
    for resource in (resources["CarePlan"], resources["Provenance"], resources["DocumentReference"]):
        assert codes(resource["interaction"]) == EVERY_INTERACTION
        assert resource["conditionalCreate"] and resource["conditionalUpdate"] and resource["updateCreate"]
    assert {"_tag", "identifier", "patient", "subject"} <= codes(resources["CarePlan"]["searchParam"])
    assert {"_tag", "target", "patient"} <= codes(resources["Provenance"]["searchParam"])
    assert {"_tag", "identifier", "patient", "type", "related"} <= codes(resources["DocumentReference"]["searchParam"])


def test_hapi_takes_conditional_transactions_conditional_updates_and_tag_or_target_searches(ehr_sandbox, fhir):
    first = fhir.post("", delivery_transaction()).json()
    fhir.post("", delivery_transaction())
    plan_id = first["entry"][0]["response"]["location"].split("/")[1]
    revised = fhir.put(
        "/CarePlan?identifier=https://example.org/fhir/careplan-id|assessment-qr1", careplan(status="revoked")
    )
    provenances = fhir.get("/Provenance", params={"_tag": "https://example.org/fhir/submission|assessment-qr1"})
    by_target = fhir.get("/Provenance", params={"target": f"CarePlan/{plan_id}"})

    assert revised.status_code == 200 and revised.json()["id"] == plan_id
    assert provenances.json()["total"] == 1 and by_target.json()["total"] == 1
    assert ehr_sandbox.refusals() == []


def test_an_unknown_profile_name_is_refused_with_the_known_names(ehr_sandbox):
    refused = httpx.post(f"{ehr_sandbox.control_url}/config", json={"profile": "epic"})

    assert refused.status_code == 400
    assert all(name in refused.json()["error"] for name in ("hapi", "full", "minimal"))
