"""Feedback: accepted suggestions and overridden cards, with the override reason, stored as AuditEvents."""

from __future__ import annotations

import uuid

from tests.cds.conftest import cds_settings
from tests.cds.support import Ehr, allergy, assessment, complete_prefetch, draft_orders, hook_body, medication_request
from tests.cds.support import searchset as bundle
from tests.support.apps import careplan_app, running

FEEDBACK = "/cds-services/scar-order-safety/feedback"


def post_feedback(ehr: Ehr, body: dict):
    ehr.shapes.check("feedback", body)
    return ehr.client.post(FEEDBACK, json=body, headers={"Authorization": f"Bearer {ehr.token(FEEDBACK)}"})


def test_an_overridden_card_and_an_accepted_suggestion_are_stored_as_audit_events(
        database_url, catalog_url, ehr_issuer, shapes, tmp_path, r4_validator):
    app = careplan_app(database_url, CATALOG_URL=catalog_url, **cds_settings(ehr_issuer, tmp_path))
    with running(app) as client:
        ehr = Ehr(client, ehr_issuer, shapes)
        body = hook_body("order-sign", complete_prefetch(assessment=bundle(assessment()),
                                                         allergies=bundle(allergy("Onion"))),
                         draftOrders=draft_orders(medication_request("Mederma gel 20 g")))
        [card] = ehr.cards("scar-order-safety", body)
        reason = card["overrideReasons"][1]
        overridden = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-12-04T10:00:00Z",
                      "overrideReason": {"reason": {"system": reason["system"], "code": reason["code"]},
                                         "userComment": "Patch test negative last week"}}
        accepted = {"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": "2026-12-04T10:01:00Z",
                    "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}]}
        response = post_feedback(ehr, {"feedback": [overridden, accepted]})
        assert response.status_code == 200, response.text
        events = [e["resource"] for e in client.get("/fhir/AuditEvent?_count=100").json()["entry"]]
    feedback = [e for e in events if e["type"]["code"] == "feedback"]
    assert len(feedback) == 2
    for event in feedback:
        r4_validator.assert_valid(event)
        assert event["entity"][0]["what"]["identifier"]["value"] == f"urn:uuid:{card['uuid']}"
        assert event["agent"][0]["who"]["identifier"] == {"system": ehr_issuer.issuer, "value": "ehr-cds-client"}
    by_outcome = {e["subtype"][0]["code"]: e for e in feedback}
    details = {d["type"]: d["valueString"] for d in by_outcome["overridden"]["entity"][0]["detail"]}
    assert details["overrideReason"] == f"{reason['system']}|{reason['code']}"
    assert "Patch test" not in str(by_outcome["overridden"])  # free text may name the patient: not stored
    assert by_outcome["accepted"]["entity"][1]["what"]["identifier"]["value"] == \
        f"urn:uuid:{card['suggestions'][0]['uuid']}"


def test_feedback_without_accepted_suggestions_for_an_accepted_card_is_400(ehr):
    response = ehr.client.post(FEEDBACK, json={"feedback": [{"card": str(uuid.uuid4()), "outcome": "accepted",
                                                             "outcomeTimestamp": "2026-12-04T10:00:00Z"}]},
                               headers={"Authorization": f"Bearer {ehr.token(FEEDBACK)}"})
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["feedback[0].acceptedSuggestions"]


def test_feedback_needs_a_jwt_for_the_feedback_endpoint_or_its_service(ehr):
    body = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden",
                          "outcomeTimestamp": "2026-12-04T10:00:00Z"}]}
    assert ehr.client.post(FEEDBACK, json=body).status_code == 401
    for audience, status in (("/cds-services/scar-plan", 401), ("/cds-services/scar-plan/feedback", 401),
                             ("/cds-services/scar-order-safety", 200)):
        token = ehr.token(audience)
        assert ehr.client.post(FEEDBACK, json=body, headers={"Authorization": f"Bearer {token}"}).status_code == status
