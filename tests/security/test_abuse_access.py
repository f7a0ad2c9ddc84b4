"""Abuse of scopes and of the plan store: what a token is not granted stays out of reach, and the one-active-plan
invariant holds under concurrency (patient scopes, create-only tokens, conditional reads, server-owned meta)."""

from __future__ import annotations

import copy
import json
import threading
from typing import Any

import httpx
from sqlalchemy import text

from tests.careplan.conftest import assessment_of, example
from tests.security.test_audit import audit_events, entities
from tests.support.apps import FHIR_JSON, careplan_app
from tests.support.servers import serve

WRITER = "system/CarePlan.c"
READER = "system/CarePlan.rs system/QuestionnaireResponse.rs"
JSON_PATCH = {"content-type": "application/json-patch+json"}


def generate(client, headers: dict[str, str], parameters: dict[str, Any] | None = None):
    body = parameters or example("atrophic-chest-visible-vessels")
    return client.post("/fhir/CarePlan/$generate", json=body, headers=FHIR_JSON | headers)


def reassessment(name: str, assessment_id: str, status: str = "active") -> dict[str, Any]:
    """The example's assessment under a new identifier: same patient and body site, a new plan."""
    parameters = example(name)
    assessment = assessment_of(parameters)
    assessment["id"] = assessment["identifier"]["value"] = assessment_id
    parameters["parameter"] = [p for p in parameters["parameter"] if p["name"] != "status"]
    parameters["parameter"].append({"name": "status", "valueCode": status})
    return parameters


# --------------------------------------------------------------------- patient scopes and the audit trail


def test_a_patient_token_sees_no_audit_event_that_names_another_patient(secured_careplan, issuer, r4_validator):
    own = generate(secured_careplan, issuer.bearer(WRITER)).json()  # Patient/example-1
    other = generate(secured_careplan, issuer.bearer(WRITER), example("hypotrophic-abdomen")).json()
    other_patient = other["subject"]["reference"]
    both = secured_careplan.get("/fhir/CarePlan", headers=issuer.bearer(READER, sub="dr-both")).json()
    assert {e["resource"]["id"] for e in both["entry"]} == {own["id"], other["id"]}

    patient = issuer.bearer("patient/AuditEvent.rs", patient="example-1")
    visible = secured_careplan.get("/fhir/AuditEvent", params={"_count": 200}, headers=patient)
    assert visible.status_code == 200, visible.text
    events = [entry["resource"] for entry in visible.json()["entry"]]
    assert events, "the patient's own accesses are listed"
    for event in events:
        named = entities(event)
        assert "Patient/example-1" in named and other_patient not in named and f"CarePlan/{other['id']}" not in named
        assert secured_careplan.get(f"/fhir/AuditEvent/{event['id']}", headers=patient).status_code == 200

    # the search that returned both patients' plans is recorded once per patient, each event naming its own
    search = [e for e in audit_events(secured_careplan, issuer, agent="dr-both")]
    assert sorted(sorted(r for r in entities(e) if r.startswith("Patient/")) for e in search) == sorted(
        [["Patient/example-1"], [other_patient]])
    by_patient = {next(r for r in entities(e) if r.startswith("Patient/")): entities(e) for e in search}
    assert f"CarePlan/{other['id']}" not in by_patient["Patient/example-1"]
    assert f"CarePlan/{own['id']}" not in by_patient[other_patient]
    for event in search:
        r4_validator.assert_valid(event)


def test_a_patient_token_cannot_reach_a_stored_event_that_names_two_patients(secured_careplan, issuer):
    own = generate(secured_careplan, issuer.bearer(WRITER)).json()
    other = generate(secured_careplan, issuer.bearer(WRITER), example("hypotrophic-abdomen")).json()
    store = secured_careplan.app.state.ctx.extras["store"]
    event = {"resourceType": "AuditEvent", "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                                                    "code": "rest"},
             "recorded": "2026-01-01T00:00:00Z", "agent": [{"requestor": True, "who": {"display": "legacy"}}],
             "source": {"observer": {"display": "legacy"}},
             "entity": [{"what": {"reference": "Patient/example-1"}}, {"what": {"reference": f"CarePlan/{own['id']}"}},
                        {"what": {"reference": other["subject"]["reference"]}},
                        {"what": {"reference": f"CarePlan/{other['id']}"}}]}
    with secured_careplan.app.state.ctx.session() as session:
        stored = store.create(session, event)
        session.commit()
    patient = issuer.bearer("patient/AuditEvent.rs", patient="example-1")
    assert secured_careplan.get(f"/fhir/AuditEvent/{stored.id}", headers=patient).status_code == 403
    found = secured_careplan.get("/fhir/AuditEvent", params={"_count": 200}, headers=patient)
    assert found.status_code == 403 and other["id"] not in found.text  # refused whole rather than disclosed


# --------------------------------------------------------------------------- $generate with create only


def test_a_create_only_token_gets_no_stored_plan_from_generate(secured_careplan, issuer, r4_validator):
    first = generate(secured_careplan, issuer.bearer(WRITER))
    assert first.status_code == 201
    unanswered = example("atrophic-chest-visible-vessels")
    for item in assessment_of(unanswered)["item"]:
        item.pop("answer", None)
    no_items = example("atrophic-chest-visible-vessels")
    assessment_of(no_items).pop("item")
    for probe in (unanswered, no_items):
        invalid = generate(secured_careplan, issuer.bearer(WRITER, sub="prober"), probe)
        assert invalid.status_code == 422, invalid.text
        assert invalid.json()["resourceType"] == "OperationOutcome" and "activity" not in invalid.text

    again = generate(secured_careplan, issuer.bearer(WRITER, sub="retrier"))
    assert again.status_code == 200, again.text
    outcome = again.json()
    r4_validator.assert_valid(outcome)
    assert outcome["resourceType"] == "OperationOutcome" and "CarePlan.r" in outcome["issue"][0]["diagnostics"]
    assert again.headers["location"].endswith(f"/CarePlan/{first.json()['id']}/_history/1")
    assert "activity" not in again.text and "example-1" not in again.text

    reader = generate(secured_careplan, issuer.bearer(f"{WRITER} system/CarePlan.r"))
    assert reader.status_code == 200 and reader.json()["id"] == first.json()["id"]


# --------------------------------------------------------------------------- one active plan per site


def test_concurrent_reassessments_leave_exactly_one_active_plan(database_url, catalog_url):
    """Six reassessments of one patient's body site, all `status=active`, at once: each is stored (201), none is
    answered 412, and exactly one plan is active; each revoked plan is replaced by a later one."""
    app = careplan_app(database_url, CATALOG_URL=catalog_url, LOG_LEVEL="WARNING", DISPATCHER="off")
    start = threading.Barrier(6)
    answers: list[httpx.Response] = []
    with serve(app) as base:
        httpx.get(f"{base}/fhir/metadata").raise_for_status()

        def submit(number: int) -> None:
            body = reassessment("atrophic-chest-visible-vessels", f"reassessment-{number}")
            with httpx.Client(base_url=base, timeout=120) as client:
                start.wait()
                answers.append(client.post("/fhir/CarePlan/$generate", json=body, headers=FHIR_JSON))

        threads = [threading.Thread(target=submit, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(a.status_code for a in answers) == [201] * 6, [a.text[:300] for a in answers]
        with httpx.Client(base_url=base) as client:
            plans = client.get("/fhir/CarePlan", params={"_count": 50}).json()["entry"]
    statuses = sorted(e["resource"]["status"] for e in plans)
    assert statuses == ["active"] + ["revoked"] * 5
    replaced = {r["reference"] for e in plans for r in e["resource"].get("replaces", [])}
    revoked = {f"CarePlan/{e['resource']['id']}" for e in plans if e["resource"]["status"] == "revoked"}
    assert replaced == revoked


def test_activating_a_second_plan_for_one_site_is_a_conflict(secured_careplan, issuer):
    token = issuer.bearer("system/CarePlan.cru")
    draft = generate(secured_careplan, token,
                     reassessment("atrophic-chest-visible-vessels", "draft", status="draft")).json()
    active = generate(secured_careplan, token, reassessment("atrophic-chest-visible-vessels", "active")).json()
    draft["status"] = "active"
    response = secured_careplan.put(f"/fhir/CarePlan/{draft['id']}", json=draft,
                                    headers=FHIR_JSON | token | {"If-Match": 'W/"1"'})
    assert response.status_code == 409, response.text
    assert active["id"] in response.json()["issue"][0]["diagnostics"]
    with secured_careplan.app.state.ctx.engine.connect() as connection:
        contents = connection.execute(text(
            "SELECT content FROM careplan_resource WHERE resource_type = 'CarePlan'")).scalars().all()
    assert sorted(json.loads(c)["status"] for c in contents) == ["active", "draft"]


# --------------------------------------------------------------------------- conditional reads and denials


def test_a_conditional_read_of_another_patients_task_is_403_not_304(secured_careplan, issuer):
    other = generate(secured_careplan, issuer.bearer(WRITER), example("hypotrophic-abdomen")).json()
    tasks = secured_careplan.get("/fhir/Task", params={"focus": f"CarePlan/{other['id']}"},
                                 headers=issuer.bearer("system/Task.rs")).json()
    task = secured_careplan.get(f"/fhir/Task/{tasks['entry'][0]['resource']['id']}",
                                headers=issuer.bearer("system/Task.rs"))
    patient = issuer.bearer("patient/Task.rs", patient="example-1", sub="curious-patient")
    response = secured_careplan.get(f"/fhir/Task/{task.json()['id']}",
                                    headers=patient | {"If-None-Match": task.headers["etag"]})
    assert response.status_code == 403
    [event] = audit_events(secured_careplan, issuer, agent="curious-patient")
    assert event["outcome"] == "4" and other["subject"]["reference"] in entities(event)


def test_a_304_and_a_denied_read_are_audited_with_their_patient(secured_careplan, issuer):
    own = generate(secured_careplan, issuer.bearer(WRITER)).json()
    other = generate(secured_careplan, issuer.bearer(WRITER), example("hypotrophic-abdomen")).json()
    patient = issuer.bearer("patient/CarePlan.rs", patient="example-1", sub="patient-1")
    cached = secured_careplan.get(f"/fhir/CarePlan/{own['id']}", headers=patient | {"If-None-Match": 'W/"1"'})
    assert cached.status_code == 304
    assert secured_careplan.get(f"/fhir/CarePlan/{other['id']}", headers=patient).status_code == 403
    [not_modified] = audit_events(secured_careplan, issuer, agent="patient-1", outcome="0")
    assert entities(not_modified) == {f"CarePlan/{own['id']}", "Patient/example-1"}
    [denied] = audit_events(secured_careplan, issuer, patient=other["subject"]["reference"], agent="patient-1")
    assert denied["outcome"] == "4" and f"CarePlan/{other['id']}" in entities(denied)
    no_scope = issuer.bearer("system/QuestionnaireResponse.rs", sub="no-plan-scope")
    assert secured_careplan.get(f"/fhir/CarePlan/{other['id']}", headers=no_scope).status_code == 403
    [refused] = audit_events(secured_careplan, issuer, patient=other["subject"]["reference"], agent="no-plan-scope")
    assert refused["outcome"] == "4" and entities(refused) == {f"CarePlan/{other['id']}", other["subject"]["reference"]}


# --------------------------------------------------------------------------- server-owned meta, JSON Patch


def test_meta_cannot_be_forged_through_put_or_patch(secured_careplan, issuer):
    plan = generate(secured_careplan, issuer.bearer(WRITER)).json()
    editor = issuer.bearer("system/CarePlan.rus")
    forged = copy.deepcopy(plan)
    forged["note"] = [{"text": "Reviewed."}]
    forged["meta"] |= {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                                     "code": "U"}],
                       "tag": [{"system": "https://attacker.example", "code": "trusted"}],
                       "source": "https://attacker.example"}
    put = secured_careplan.put(f"/fhir/CarePlan/{plan['id']}", json=forged,
                               headers=FHIR_JSON | editor | {"If-Match": 'W/"1"'})
    assert put.status_code == 422, put.text
    for operation in ({"op": "add", "path": "/meta/tag", "value": [{"system": "https://a.example", "code": "x"}]},
                      {"op": "add", "path": "/meta/source", "value": "https://attacker.example"},
                      {"op": "add", "path": "/meta/security",
                       "value": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                                  "code": "U"}]}):
        patched = secured_careplan.patch(f"/fhir/CarePlan/{plan['id']}", content=json.dumps([operation]),
                                         headers=JSON_PATCH | editor | {"If-Match": 'W/"1"'})
        assert patched.status_code == 422, (operation, patched.text)
    stored = secured_careplan.get(f"/fhir/CarePlan/{plan['id']}", headers=issuer.bearer(READER)).json()
    assert stored["meta"] == plan["meta"]
    # the plan as read, with only its notes changed, is still accepted
    fine = dict(plan, note=[{"text": "Reviewed."}])
    assert secured_careplan.put(f"/fhir/CarePlan/{plan['id']}", json=fine,
                                headers=FHIR_JSON | editor | {"If-Match": 'W/"1"'}).status_code == 200


def test_a_negative_json_patch_index_or_a_status_that_is_no_code_is_refused(secured_careplan, issuer):
    plan = generate(secured_careplan, issuer.bearer(WRITER)).json()
    editor = issuer.bearer("system/CarePlan.rus")
    add = [{"op": "add", "path": "/note", "value": [{"text": "first"}]}]
    assert secured_careplan.patch(f"/fhir/CarePlan/{plan['id']}", content=json.dumps(add),
                                  headers=JSON_PATCH | editor | {"If-Match": 'W/"1"'}).status_code == 200
    for operation in ({"op": "add", "path": "/note/-1", "value": {"text": "sneaked in"}},
                      {"op": "replace", "path": "/note/-1", "value": {"text": "rewritten"}},
                      {"op": "remove", "path": "/note/-1"},
                      {"op": "replace", "path": "/status", "value": {"text": "active"}},
                      {"op": "add", "path": "", "value": "not a plan"}):
        response = secured_careplan.patch(f"/fhir/CarePlan/{plan['id']}", content=json.dumps([operation]),
                                          headers=JSON_PATCH | editor | {"If-Match": 'W/"2"'})
        assert response.status_code in (400, 422), (operation, response.text)
        assert response.json()["resourceType"] == "OperationOutcome"
