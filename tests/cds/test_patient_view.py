"""`scar-plan` on `patient-view`: a proposed plan for an assessment without one, the next sessions of an active
plan, nothing otherwise; missing prefetch is read from the EHR's FHIR server with the token the EHR gave."""

from __future__ import annotations

from datetime import date, timedelta

import httpx

from tests.cds.support import PATIENT, assessment, complete_prefetch, hook_body, pregnancy, searchset
from tests.support.apps import FHIR_JSON


def active_plan(ehr, start: date) -> dict:
    """The plan $apply makes for the shin assessment, starting on `start`, as the EHR holds it once active."""
    parameters = {"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueReference": {"reference": f"Patient/{PATIENT}"}},
        {"name": "data", "resource": {"resourceType": "Bundle", "type": "collection",
                                      "entry": [{"resource": assessment()}]}},
        {"name": "start", "valueDate": start.isoformat()}]}
    response = ehr.client.post("/fhir/PlanDefinition/$apply", json=parameters, headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    return response.json() | {"id": "plan-1", "status": "active"}


def test_an_assessment_without_a_plan_gets_an_info_card_proposing_the_apply_careplan_as_a_draft(ehr, r4_validator):
    body = hook_body("patient-view", complete_prefetch(assessment=searchset(assessment())))
    [card] = ehr.cards("scar-plan", body)
    assert card["indicator"] == "info"
    assert card["summary"].startswith("Proposed scar plan from ")
    [suggestion] = card["suggestions"]
    [action] = suggestion["actions"]
    assert action["type"] == "create"
    careplan = action["resource"]
    assert careplan["resourceType"] == "CarePlan" and careplan["status"] == "draft"
    assert careplan["subject"] == {"reference": f"Patient/{PATIENT}"}
    r4_validator.assert_valid(careplan)


def test_a_pregnancy_observation_screens_the_proposed_plan_like_an_assessment_answer(ehr, r4_validator):
    body = hook_body("patient-view", complete_prefetch(assessment=searchset(assessment()),
                                                       pregnancy=searchset(pregnancy(True))))
    [card] = ehr.cards("scar-plan", body)
    careplan = card["suggestions"][0]["actions"][0]["resource"]
    left_out = [a["detail"] for a in careplan["activity"] if a["detail"].get("doNotPerform")]
    assert any("Retinoic acid" in d["description"] and "pregnant" in d["description"] for d in left_out)


def test_no_assessment_and_no_plan_gives_no_card(ehr):
    assert ehr.cards("scar-plan", hook_body("patient-view", complete_prefetch())) == []


def test_an_active_plan_gets_a_card_with_its_next_sessions(ehr):
    plan = active_plan(ehr, date.today() + timedelta(days=7))
    body = hook_body("patient-view", complete_prefetch(assessment=searchset(assessment()),
                                                       carePlans=searchset(plan)))
    [card] = ehr.cards("scar-plan", body)
    assert card["indicator"] == "info" and "suggestions" not in card
    first = min(e for a in plan["activity"] for e in a["detail"].get("scheduledTiming", {}).get("event", []))
    assert date.fromisoformat(first[:10]).strftime("%d %b %Y") in card["summary"]
    assert card["detail"].count("\n- ") == 5


def test_data_about_another_patient_in_the_prefetch_is_ignored(ehr):
    other = assessment() | {"subject": {"reference": "Patient/someone-else"}}
    assert ehr.cards("scar-plan", hook_body("patient-view", complete_prefetch(assessment=searchset(other)))) == []


def test_missing_prefetch_is_read_from_the_fhir_server_with_the_given_token(ehr, ehr_sandbox, r4_validator):
    fhir = ehr_sandbox.base_url
    for resource in (assessment() | {"id": None}, pregnancy(True) | {"id": None}):
        created = httpx.post(f"{fhir}/{resource['resourceType']}", headers=FHIR_JSON,
                             json={k: v for k, v in resource.items() if v is not None})
        assert created.status_code == 201, created.text
    ehr_sandbox.configure(token="ehr-issued-token-1")
    ehr_sandbox.clear_requests()
    body = hook_body("patient-view", {"carePlans": None}) | {
        "fhirServer": fhir,
        "fhirAuthorization": {"access_token": "ehr-issued-token-1", "token_type": "Bearer", "expires_in": 300,
                              "scope": "patient/QuestionnaireResponse.rs patient/Observation.rs",
                              "subject": "cicatrix"}}
    [card] = ehr.cards("scar-plan", body)
    careplan = card["suggestions"][0]["actions"][0]["resource"]
    r4_validator.assert_valid(careplan)
    left_out = [a["detail"]["description"] for a in careplan["activity"] if a["detail"].get("doNotPerform")]
    assert any("pregnant" in description for description in left_out)
    requests = ehr_sandbox.requests()
    assert sorted(r["path"] for r in requests) == ["/fhir/AllergyIntolerance", "/fhir/Observation",
                                                   "/fhir/Observation", "/fhir/QuestionnaireResponse"]
    # the sandbox answers 401 to any other token (its log keeps only the scheme)
    assert all(r["headers"]["authorization"] == "Bearer" and r["status"] == 200 for r in requests)
    assert all(r["query"]["patient"] == [f"Patient/{PATIENT}"] for r in requests)


def test_without_prefetch_or_fhir_server_the_card_says_what_was_not_checked(ehr):
    [card] = ehr.cards("scar-plan", hook_body("patient-view"))
    assert card["indicator"] == "info"
    assert card["summary"].startswith("Not checked: ")
    assert "scar assessment" in card["summary"] and "active care plans" in card["summary"]


def test_a_call_without_patient_id_is_400(ehr):
    body = hook_body("patient-view")
    del body["context"]["patientId"]
    response = ehr.client.post("/cds-services/scar-plan", json=body,
                               headers={"Authorization": f"Bearer {ehr.token('/cds-services/scar-plan')}"})
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["context.patientId"]


def test_prefetch_that_is_not_valid_r4_is_400_naming_where(ehr):
    broken = assessment() | {"status": "finished-ish"}
    response = ehr.call("scar-plan", hook_body("patient-view", complete_prefetch(assessment=searchset(broken))))
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"][0].startswith("prefetch.assessment.")


def test_a_draft_order_that_is_not_valid_r4_is_400(ehr):
    from tests.cds.support import draft_orders
    order = {"resourceType": "MedicationRequest", "id": "rx-1", "status": "draft", "intent": "order",
             "medicationCodeableConcept": "tretinoin", "subject": {"reference": "Patient/p1"}}
    response = ehr.call("scar-order-safety", hook_body("order-sign", {}, draftOrders=draft_orders(order)))
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"][0].startswith("context.draftOrders.")
