"""Plan changes reach the EHR as updates of its copy: If-Match on the EHR's version, 412 re-read, revocation."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from tests.delivery.conftest import deliveries, delivery_settings, drain, identifiers_in_ehr
from tests.delivery.factories import store_plan

pytestmark = pytest.mark.sandbox

FHIR_JSON = {"content-type": "application/fhir+json"}


def activate(api, plan_id: str, version: int = 1) -> httpx.Response:
    current = api.get(f"/fhir/CarePlan/{plan_id}").json()
    current["status"] = "active"
    return api.put(f"/fhir/CarePlan/{plan_id}", json=current, headers={**FHIR_JSON, "If-Match": f'W/"{version}"'})


def test_put_draft_to_active_updates_the_ehr_copy_with_if_match(engine, database_url, ehr_sandbox, api,
                                                                 r4_validator):
    plan = store_plan(engine)
    settings = delivery_settings(database_url, ehr_sandbox.base_url)
    drain(settings, engine)
    [first] = ehr_sandbox.store("CarePlan")

    response = activate(api, plan.id)
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == 'W/"2"'
    drain(settings, engine)

    [updated] = ehr_sandbox.store("CarePlan")
    assert (updated["id"], updated["status"], updated["meta"]["versionId"]) == (first["id"], "active", "2")
    update_bundle = [r for r in ehr_sandbox.requests() if r["method"] == "POST" and r["path"] == "/fhir"][-1]["body"]
    r4_validator.assert_valid(update_bundle)
    put, prov = update_bundle["entry"]
    assert put["request"] == {"method": "PUT", "url": f"CarePlan/{first['id']}", "ifMatch": 'W/"1"'}
    assert prov["resource"]["activity"]["coding"][0]["code"] == "UPDATE"
    assert len(ehr_sandbox.store("Provenance")) == 2
    create, update = deliveries(engine, plan.id)
    assert (create.kind, update.kind, update.state, update.ehr_version) == ("create", "update", "completed", "2")


def test_patch_status_on_an_ehr_without_transactions_is_a_put_with_if_match(engine, database_url, ehr_sandbox,
                                                                             api):
    ehr_sandbox.configure(profile="no-transaction")
    plan = store_plan(engine)
    settings = delivery_settings(database_url, ehr_sandbox.base_url)
    drain(settings, engine)

    response = api.patch(f"/fhir/CarePlan/{plan.id}", content=json.dumps([
        {"op": "test", "path": "/status", "value": "draft"}, {"op": "replace", "path": "/status", "value": "active"},
        {"op": "add", "path": "/note/-", "value": {"text": "Approved at the scar clinic."}}]),
        headers={"content-type": "application/json-patch+json", "If-Match": 'W/"1"'})
    assert response.status_code == 200, response.text
    drain(settings, engine)

    [stored] = ehr_sandbox.store("CarePlan")
    assert stored["status"] == "active" and stored["note"][-1]["text"] == "Approved at the scar clinic."
    [put] = [r for r in ehr_sandbox.requests() if r["method"] == "PUT"]
    assert put["path"] == f"/fhir/CarePlan/{stored['id']}" and put["headers"]["if-match"] == 'W/"1"'


def test_412_from_the_ehr_rereads_and_reapplies_the_change(engine, database_url, ehr_sandbox, api):
    plan = store_plan(engine)
    settings = delivery_settings(database_url, ehr_sandbox.base_url)
    drain(settings, engine)
    [copy] = ehr_sandbox.store("CarePlan")
    copy["description"] = "Edited in the EHR by a nurse"  # the EHR's copy moves on to version 2
    edited = httpx.put(f"{ehr_sandbox.base_url}/CarePlan/{copy['id']}", json=copy, headers=FHIR_JSON)
    assert edited.status_code == 200

    assert activate(api, plan.id).status_code == 200
    drain(settings, engine)

    [stored] = ehr_sandbox.store("CarePlan")
    assert stored["status"] == "active"  # our change
    assert stored["description"] == "Edited in the EHR by a nurse"  # theirs, kept
    assert stored["meta"]["versionId"] == "3"
    statuses = [r["status"] for r in ehr_sandbox.requests() if r["method"] == "POST" and r["path"] == "/fhir"]
    assert statuses == [200, 412, 200]
    assert identifiers_in_ehr(ehr_sandbox) == [plan.parsed()["identifier"][0]["value"]]
    assert deliveries(engine, plan.id)[-1].state == "completed"


def test_a_reassessment_revokes_the_old_plan_in_the_ehr_and_links_the_new_one(engine, database_url, ehr_sandbox):
    old = store_plan(engine, status="active", site="shin")
    settings = delivery_settings(database_url, ehr_sandbox.base_url)
    drain(settings, engine)

    new = store_plan(engine, status="active", site="shin")  # same patient and site: replaces the old plan
    drain(settings, engine)

    by_identifier = {r["identifier"][0]["value"]: r for r in ehr_sandbox.store("CarePlan")}
    old_copy, new_copy = by_identifier[old.id], by_identifier[new.id]
    assert old_copy["status"] == "revoked"
    assert new_copy["replaces"] == [{"reference": f"CarePlan/{old_copy['id']}", "type": "CarePlan",
                                     "identifier": {"system": "https://fhir.cicatrix.org/careplan-id",
                                                    "value": old.id}}]
    assert sorted(d.kind for d in deliveries(engine)) == ["create", "create", "update"]


def test_versions_queued_before_any_delivery_go_out_in_order(engine, database_url, ehr_sandbox, api):
    plan = store_plan(engine)
    assert activate(api, plan.id).status_code == 200

    drain(delivery_settings(database_url, ehr_sandbox.base_url), engine)

    [stored] = ehr_sandbox.store("CarePlan")
    assert stored["status"] == "active" and stored["meta"]["versionId"] == "2"
    assert [(d.careplan_version, d.state) for d in deliveries(engine, plan.id)] == [(1, "completed"),
                                                                                    (2, "completed")]


def test_retrying_an_old_failed_version_after_a_newer_one_arrived_is_superseded(engine, database_url,
                                                                                  ehr_sandbox, api):
    plan = store_plan(engine)
    settings = delivery_settings(database_url, ehr_sandbox.base_url)
    ehr_sandbox.queue_fault(action="status", status=422, match={"method": "POST", "path": "/fhir"})
    drain(settings, engine)
    assert activate(api, plan.id).status_code == 200
    drain(settings, engine)  # version 2 goes in as a create: the EHR never had version 1
    [stored] = ehr_sandbox.store("CarePlan")
    assert stored["status"] == "active"

    old = deliveries(engine, plan.id)[0]
    assert api.post(f"/fhir/Task/{old.id}/$retry").status_code == 200
    drain(settings, engine)

    assert deliveries(engine, plan.id)[0].state == "cancelled"
    task = api.get(f"/fhir/Task/{old.id}").json()
    assert task["status"] == "cancelled" and "superseded" in task["statusReason"]["text"]
    assert ehr_sandbox.store("CarePlan")[0]["status"] == "active"  # the old version did not overwrite it


def test_document_shape_without_a_known_author_files_a_replacing_document(engine, database_url, ehr_sandbox, api,
                                                                           r4_validator):
    ehr_sandbox.configure(profile="oracle-millennium")  # takes document updates, but only with an author
    plan = store_plan(engine)
    settings = delivery_settings(database_url, ehr_sandbox.base_url)
    drain(settings, engine)
    assert activate(api, plan.id).status_code == 200
    drain(settings, engine)

    first, second = ehr_sandbox.store("DocumentReference")
    r4_validator.assert_valid(second)
    assert second["relatesTo"] == [{"code": "replaces", "target": {"reference": f"DocumentReference/{first['id']}"}}]
    assert second["docStatus"] == "final" and "author" not in second
    page = base64.b64decode(second["content"][0]["attachment"]["data"]).decode()
    assert "Status: <b>active</b>" in page
    assert ehr_sandbox.refusals() == []


@pytest.mark.parametrize("change, status", [
    ({"title": "Something else"}, 422),
    ({"status": "completed"}, 422),  # a draft cannot be completed
])
def test_put_refuses_anything_but_status_and_notes(engine, ehr_sandbox, api, change, status):
    plan = store_plan(engine)
    current = api.get(f"/fhir/CarePlan/{plan.id}").json()

    response = api.put(f"/fhir/CarePlan/{plan.id}", json=current | change,
                       headers={**FHIR_JSON, "If-Match": 'W/"1"'})

    assert response.status_code == status
    assert response.json()["resourceType"] == "OperationOutcome"
    assert len(deliveries(engine, plan.id)) == 1


def test_put_needs_the_current_version_and_a_no_op_queues_nothing(engine, ehr_sandbox, api):
    plan = store_plan(engine)
    current = api.get(f"/fhir/CarePlan/{plan.id}").json()

    assert api.put(f"/fhir/CarePlan/{plan.id}", json=current, headers=FHIR_JSON).status_code == 400
    stale = api.put(f"/fhir/CarePlan/{plan.id}", json=current | {"status": "active"},
                    headers={**FHIR_JSON, "If-Match": 'W/"7"'})
    assert stale.status_code == 412
    same = api.put(f"/fhir/CarePlan/{plan.id}", json=current, headers={**FHIR_JSON, "If-Match": 'W/"1"'})
    assert same.status_code == 200 and same.headers["etag"] == 'W/"1"'
    assert len(deliveries(engine, plan.id)) == 1
