"""Implausible assessments are refused with a 422 naming the item; doubtful ones are planned with a warning.

The rules are the scar assessment Questionnaire's constraints (catalog content): scar area
above 0, scar age at most 1,200 months and never above the patient's age when the request
carries the Patient with a birth date; a hypotrophic scar on a site with a thin hypodermis
is a warning on the plan and in the `$apply` OperationOutcome.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from services.careplan.plausibility import age_in_months
from tests.careplan.conftest import answer, assessment_of, example
from tests.support.apps import FHIR_JSON


def with_answer(parameters: dict[str, Any], link_id: str, value: dict[str, Any]) -> dict[str, Any]:
    response = assessment_of(parameters)
    response["item"] = [i for i in response["item"] if i["linkId"] != link_id] + [{"linkId": link_id,
                                                                                   "answer": [value]}]
    return parameters


def item_index(parameters: dict[str, Any], link_id: str) -> int:
    return [i["linkId"] for i in assessment_of(parameters)["item"]].index(link_id)


def with_patient(parameters: dict[str, Any], birth_date: str, patient_id: str = "example-1") -> dict[str, Any]:
    parameters["parameter"].append({"name": "patient", "resource": {"resourceType": "Patient", "id": patient_id,
                                                                    "birthDate": birth_date}})
    return parameters


def as_apply(parameters: dict[str, Any]) -> dict[str, Any]:
    by_name = {p["name"]: p for p in parameters["parameter"]}
    entries = [{"resource": by_name["assessment"]["resource"]}]
    if "patient" in by_name:
        entries.append({"resource": by_name["patient"]["resource"]})
    return {"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueString": by_name["subject"]["valueReference"]["reference"]},
        {"name": "start", "valueDate": by_name["start"]["valueDate"]},
        {"name": "data", "resource": {"resourceType": "Bundle", "type": "collection", "entry": entries}}]}


@pytest.mark.parametrize("link_id,value,says", [
    ("area-cm2", {"valueDecimal": 0}, "greater than 0"),
    ("area-cm2", {"valueDecimal": -2.5}, "greater than 0"),
    ("scar-age-months", {"valueInteger": 1201}, "1,200 months"),
])
def test_an_implausible_answer_is_422_naming_the_item(careplan, r4_validator, link_id, value, says):
    parameters = with_answer(example("atrophic-chest-visible-vessels"), link_id, value)
    response = careplan.post("/fhir/CarePlan/$generate", json=parameters, headers=FHIR_JSON)
    assert response.status_code == 422, response.text[:300]
    outcome = response.json()
    r4_validator.assert_valid(outcome)
    [issue] = outcome["issue"]
    assert issue["expression"] == [f"QuestionnaireResponse.item[{item_index(parameters, link_id)}]"]
    assert f"'{link_id}'" in issue["diagnostics"] and says in issue["diagnostics"]


def test_a_scar_older_than_the_patient_is_422_when_the_birth_date_is_known(careplan):
    parameters = with_answer(example("atrophic-chest-visible-vessels"), "scar-age-months", {"valueInteger": 30})
    younger = with_patient(parameters, "2024-06-15")  # about 20 months old on 2026-02-26, the assessment's date
    response = careplan.post("/fhir/CarePlan/$generate", json=younger, headers=FHIR_JSON)
    assert response.status_code == 422, response.text[:300]
    assert "older than the patient" in response.json()["issue"][0]["diagnostics"]
    response = careplan.post("/fhir/PlanDefinition/$apply", json=as_apply(younger), headers=FHIR_JSON)
    assert response.status_code == 422, response.text[:300]


def test_a_scar_younger_than_the_patient_is_planned(careplan):
    parameters = with_patient(example("atrophic-chest-visible-vessels"), "1980")
    response = careplan.post("/fhir/CarePlan/$generate", json=parameters, headers=FHIR_JSON)
    assert response.status_code == 201, response.text[:300]


def test_a_patient_who_is_not_the_subject_is_422(careplan):
    parameters = with_patient(example("atrophic-chest-visible-vessels"), "1980-01-01", patient_id="someone-else")
    response = careplan.post("/fhir/CarePlan/$generate", json=parameters, headers=FHIR_JSON)
    assert response.status_code == 422 and response.json()["issue"][0]["expression"] == ["Patient.id"]


def test_a_hypotrophic_scar_on_the_shin_is_planned_with_a_warning_in_the_apply_outcome(careplan, r4_validator):
    parameters = example("hypotrophic-abdomen")
    answer(parameters, "body-site")["answer"] = [{"valueCoding": {
        "system": "https://fhir.cicatrix.org/CodeSystem/body-site", "code": "anterior-shin"}}]
    response = careplan.post("/fhir/PlanDefinition/$apply", json=as_apply(parameters), headers=FHIR_JSON)
    assert response.status_code == 200, response.text[:300]
    body = response.json()
    r4_validator.assert_valid(body)
    assert body["resourceType"] == "Parameters"
    parts = {p["name"]: p["resource"] for p in body["parameter"]}
    plan, outcome = parts["return"], parts["outcome"]
    assert plan["resourceType"] == "CarePlan" and plan["activity"]
    [issue] = outcome["issue"]
    assert issue["severity"] == "warning" and "hypotrophic" in issue["diagnostics"]
    assert issue["expression"] == [f"QuestionnaireResponse.item[{item_index(parameters, 'body-site')}]"]
    assert any(n["text"] == f"Check the assessment: {issue['diagnostics']}" for n in plan["note"])


def test_apply_without_warnings_answers_the_careplan_itself(careplan):
    response = careplan.post("/fhir/PlanDefinition/$apply", json=as_apply(example("hypotrophic-abdomen")),
                             headers=FHIR_JSON)
    assert response.status_code == 200 and response.json()["resourceType"] == "CarePlan"


@pytest.mark.parametrize("birth_date,on,months", [
    ("2000-03-15", date(2026, 3, 14), 311), ("2000-03-15", date(2026, 3, 15), 312),
    ("2000-03", date(2026, 3, 1), 312), ("2000", date(2026, 1, 1), 312), ("garbage", date(2026, 1, 1), None),
])
def test_age_in_months_never_makes_the_patient_younger_than_possible(birth_date, on, months):
    assert age_in_months(birth_date, on) == months
