"""The strict gate: whatever the CapabilityStatement does not declare is refused, and the refusal is logged."""

from __future__ import annotations

import pytest

from tests.sandbox.conftest import careplan, delivery_transaction, issue_text

pytestmark = pytest.mark.sandbox

PLAN_ID = "identifier=https://example.org/fhir/careplan-id|assessment-qr1"


def only_refusal(ehr_sandbox) -> dict:
    refusals = ehr_sandbox.refusals()
    assert len(refusals) == 1, refusals
    return refusals[0]["refusal"]


def test_requests_that_use_only_declared_capabilities_log_no_refusal(ehr_sandbox, fhir):
    fhir.post("/CarePlan", careplan(), headers={"If-None-Exist": PLAN_ID})
    fhir.get("/CarePlan", params={"identifier": "https://example.org/fhir/careplan-id|assessment-qr1", "_count": "5"})
    fhir.post("", delivery_transaction("qr2"))

    assert ehr_sandbox.refusals() == []
    assert [entry["refusal"] for entry in ehr_sandbox.requests()] == [None, None, None]


def test_an_undeclared_type_is_404_and_logged(ehr_sandbox, fhir):
    response = fhir.get("/Careplan")

    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"
    refusal = only_refusal(ehr_sandbox)
    assert refusal["kind"] == "undeclared-type" and "Careplan" in refusal["detail"]


def test_an_undeclared_interaction_is_405_and_logged(ehr_sandbox, fhir):
    response = fhir.http.patch("/CarePlan/x", content=b"[]", headers={"Content-Type": "application/json-patch+json"})

    assert response.status_code == 405
    assert only_refusal(ehr_sandbox)["kind"] == "undeclared-interaction"


@pytest.mark.parametrize(
    "params",
    [
        {"identifer": "x"},
        {"_include": "CarePlan:subject"},
        {"subject.name": "x"},
        {"subject:Patient.name": "x"},
        {"_sort": "title"},
        {"_summary": "true"},
    ],
)
def test_an_undeclared_search_parameter_is_400_and_logged(ehr_sandbox, fhir, params):
    response = fhir.get("/CarePlan", params=params)

    assert response.status_code == 400
    refusal = only_refusal(ehr_sandbox)
    assert refusal["kind"] == "undeclared-search-param"
    assert refusal["detail"] in issue_text(response.json())


def test_an_undeclared_search_parameter_in_a_form_search_is_400_and_logged(ehr_sandbox, fhir):
    response = fhir.http.post(
        "/CarePlan/_search", content=b"identifer=x", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )

    assert response.status_code == 400
    assert only_refusal(ehr_sandbox)["kind"] == "undeclared-search-param"


def test_an_undeclared_search_parameter_in_if_none_exist_is_400_logged_and_stores_nothing(ehr_sandbox, fhir):
    response = fhir.post("/CarePlan", careplan(), headers={"If-None-Exist": "identifer=x"})

    assert response.status_code == 400
    refusal = only_refusal(ehr_sandbox)
    assert refusal["kind"] == "undeclared-search-param" and "identifer" in refusal["detail"]
    assert ehr_sandbox.store() == []


def test_an_undeclared_search_parameter_in_a_bundle_if_none_exist_refuses_the_bundle_and_names_the_entry(
    ehr_sandbox, fhir
):
    bundle = delivery_transaction()
    bundle["entry"][1]["request"]["ifNoneExist"] = "identifier=https://example.org/fhir/submission|assessment-qr1"

    response = fhir.post("", bundle)

    assert response.status_code == 400
    refusal = only_refusal(ehr_sandbox)
    assert refusal["kind"] == "undeclared-search-param"
    assert refusal["detail"].startswith("Bundle.entry[1]: ") and "Provenance" in refusal["detail"]
    assert ehr_sandbox.store() == []


def test_a_refusal_is_logged_even_when_a_fault_replaces_the_answer(ehr_sandbox, fhir):
    ehr_sandbox.queue_fault(action="apply-then-fail", status=500, match={"path": "/fhir/CarePlan"})

    assert fhir.get("/CarePlan", params={"identifer": "x"}).status_code == 500
    assert only_refusal(ehr_sandbox)["kind"] == "undeclared-search-param"
