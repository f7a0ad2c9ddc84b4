"""Conditional create (If-None-Exist): the idempotency a retried delivery relies on."""

from __future__ import annotations

import pytest

from tests.sandbox.conftest import careplan, issue_text

pytestmark = pytest.mark.sandbox

CRITERIA = "identifier=https://example.org/fhir/careplan-id|assessment-qr1"


def test_conditional_create_without_a_match_creates_with_201(ehr_sandbox, fhir):
    response = fhir.post("/CarePlan", careplan(), headers={"If-None-Exist": CRITERIA})

    assert response.status_code == 201
    assert len(ehr_sandbox.store("CarePlan")) == 1


def test_conditional_create_repeated_keeps_one_resource_and_answers_200_with_it(ehr_sandbox, fhir):
    first = fhir.post("/CarePlan", careplan(), headers={"If-None-Exist": CRITERIA})

    again = [fhir.post("/CarePlan", careplan(), headers={"If-None-Exist": CRITERIA}) for _ in range(3)]

    assert first.status_code == 201
    assert [r.status_code for r in again] == [200, 200, 200]
    assert {r.json()["id"] for r in again} == {first.json()["id"]}
    assert [r["id"] for r in ehr_sandbox.store("CarePlan")] == [first.json()["id"]]


def test_conditional_create_matching_several_resources_is_412(ehr_sandbox, fhir):
    fhir.post("/CarePlan", careplan("a"))
    fhir.post("/CarePlan", careplan("b"))

    response = fhir.post("/CarePlan", careplan("c"), headers={"If-None-Exist": "status=active"})

    assert response.status_code == 412
    assert response.json()["resourceType"] == "OperationOutcome"
    assert len(ehr_sandbox.store("CarePlan")) == 2


def test_conditional_create_with_an_unknown_parameter_is_400_and_stores_nothing(ehr_sandbox, fhir):
    response = fhir.post(
        "/CarePlan", careplan(), headers={"If-None-Exist": "identifer=https://example.org/fhir/careplan-id|x"}
    )

    assert response.status_code == 400
    assert "identifer" in issue_text(response.json())
    assert ehr_sandbox.store() == []


def test_conditional_create_with_a_leading_question_mark_is_400_not_a_match_on_everything(ehr_sandbox, fhir):
    fhir.post("/CarePlan", careplan("other"))

    response = fhir.post("/CarePlan", careplan(), headers={"If-None-Exist": f"?{CRITERIA}"})

    assert response.status_code == 400
    assert len(ehr_sandbox.store("CarePlan")) == 1


def test_conditional_create_of_an_invalid_resource_is_400_even_when_it_matches(fhir):
    fhir.post("/CarePlan", careplan())
    invalid = careplan()
    del invalid["intent"]

    response = fhir.post("/CarePlan", invalid, headers={"If-None-Exist": CRITERIA})

    assert response.status_code == 400


def test_conditional_create_of_an_invalid_resource_without_a_match_is_400_and_stores_nothing(ehr_sandbox, fhir):
    """Validated once, before the search: what it creates when nothing matches was checked all the same."""
    invalid = careplan()
    del invalid["intent"]

    response = fhir.post("/CarePlan", invalid, headers={"If-None-Exist": CRITERIA})
    in_bundle = fhir.post("", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": invalid, "request": {"method": "POST", "url": "CarePlan", "ifNoneExist": CRITERIA}}]})

    assert response.status_code == 400
    assert in_bundle.status_code == 400
    assert "intent" in issue_text(response.json()) and "intent" in issue_text(in_bundle.json())
    assert ehr_sandbox.store() == []


def test_provenance_is_made_idempotent_with_a_tag(ehr_sandbox, fhir):
    from tests.sandbox.conftest import provenance

    criteria = "_tag=https://example.org/fhir/submission|assessment-qr1"
    codes = [
        fhir.post("/Provenance", provenance("CarePlan/cp1"), headers={"If-None-Exist": criteria}).status_code
        for _ in range(2)
    ]

    assert codes == [201, 200]
    assert len(ehr_sandbox.store("Provenance")) == 1


def test_provenance_has_no_identifier_search_parameter_in_r4(fhir):
    from tests.sandbox.conftest import provenance

    response = fhir.post("/Provenance", provenance("CarePlan/cp1"), headers={"If-None-Exist": "identifier=x|y"})

    assert response.status_code == 400
