"""Batch and transaction Bundles posted to /fhir, on SQLite and PostgreSQL.

Each test gets a fresh database (`database_url`), so "nothing was stored" is checked
by counting. Every response Bundle and OperationOutcome passes the R4 validator.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.catalog.factories import (
    TEST_BASE,
    activity_definition,
    catalog,
    create,
    outcome_expressions,
    post_entry,
    transaction,
    unique,
)
from tests.support.apps import FHIR_JSON
from tests.support.r4 import R4Validator

MEDICATION_URN = "urn:uuid:6c3a3d3e-2a8f-4bd5-9f0e-0d4a6f2b9e11"
ACTIVITY_URN = "urn:uuid:0b8f1f5c-7f43-4b47-8d0e-5a3f2f1c7d22"


@pytest.fixture
def client(database_url: str, r4_validator: R4Validator) -> Iterator[TestClient]:
    with catalog(database_url, r4_validator) as client:
        yield client


def count(client: TestClient, resource_type: str, **params: Any) -> int:
    response = client.get(f"/fhir/{resource_type}", params={**params, "_summary": "count"})
    return response.json()["total"]  # type: ignore[no-any-return]


def answered(response: Any, r4_validator: R4Validator, kind: str) -> list[dict[str, Any]]:
    """The response entries of a valid batch-response / transaction-response."""
    assert response.status_code == 200, response.text
    r4_validator.assert_valid(response.content)
    bundle = response.json()
    assert bundle["type"] == kind
    return bundle["entry"]  # type: ignore[no-any-return]


def failed(response: Any, status: int, r4_validator: R4Validator) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    r4_validator.assert_valid(body)
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["severity"] == "error"
    return body  # type: ignore[no-any-return]


def medication() -> dict[str, Any]:
    return {"resourceType": "Medication", "status": "active",
            "code": {"text": unique("Gel"), "coding": [{"system": f"{TEST_BASE}/CodeSystem/prep", "code": unique()}]}}


# ---------------------------------------------------------------------- transaction


def test_transaction_answers_one_entry_per_request_in_the_original_order(client, r4_validator):
    name = unique("Act")
    entries = [
        {"request": {"method": "GET", "url": f"ActivityDefinition?name={name}"}},  # runs last: sees the create
        post_entry(activity_definition(name)),
        post_entry(medication()),
    ]
    response_entries = answered(transaction(client, entries), r4_validator, "transaction-response")
    search, created, med = response_entries
    assert search["response"]["status"] == "200 OK"
    assert [e["resource"]["name"] for e in search["resource"]["entry"]] == [name]
    for entry, kind in ((created, "ActivityDefinition"), (med, "Medication")):
        resource, response = entry["resource"], entry["response"]
        assert response["status"] == "201 Created"
        assert response["location"] == f"{kind}/{resource['id']}/_history/1"
        assert response["etag"] == 'W/"1"'
        assert response["lastModified"] == resource["meta"]["lastUpdated"]
        assert entry["fullUrl"].endswith(f"/fhir/{kind}/{resource['id']}")
    assert client.get(f"/fhir/ActivityDefinition/{created['resource']['id']}").json() == created["resource"]


def test_transaction_rewrites_placeholder_references_but_not_canonicals(client, r4_validator):
    definition = activity_definition(productReference={"reference": MEDICATION_URN},
                                     relatedArtifact=[{"type": "depends-on", "resource": MEDICATION_URN}])
    protocol = {"resourceType": "PlanDefinition", "status": "active", "name": unique("Protocol"),
                "action": [{"definitionCanonical": ACTIVITY_URN,
                            "participant": [{"type": "practitioner"}],
                            "extension": [{"url": f"{TEST_BASE}/StructureDefinition/uses",
                                           "valueReference": {"reference": ACTIVITY_URN}}]}]}
    entries = [post_entry(protocol), post_entry(definition, ACTIVITY_URN), post_entry(medication(), MEDICATION_URN)]
    stored_protocol, stored_definition, stored_medication = (
        e["resource"] for e in answered(transaction(client, entries), r4_validator, "transaction-response"))
    assert stored_definition["productReference"] == {"reference": f"Medication/{stored_medication['id']}"}
    assert stored_definition["relatedArtifact"][0]["resource"] == MEDICATION_URN  # a canonical stays as written
    action = stored_protocol["action"][0]
    assert action["extension"][0]["valueReference"] == {"reference": f"ActivityDefinition/{stored_definition['id']}"}
    assert action["definitionCanonical"] == ACTIVITY_URN


def test_transaction_processes_deletes_before_creates(client, r4_validator):
    old = create(client, activity_definition())
    replacement = {k: v for k, v in old.items() if k not in ("id", "meta")}  # same url and version
    entries = [post_entry(replacement), {"request": {"method": "DELETE", "url": f"ActivityDefinition/{old['id']}"}}]
    created, deleted = answered(transaction(client, entries), r4_validator, "transaction-response")
    assert created["response"]["status"] == "201 Created"
    assert deleted["response"]["status"] == "204 No Content" and "resource" not in deleted
    assert deleted["response"]["etag"] == 'W/"2"'
    assert client.get(f"/fhir/ActivityDefinition/{old['id']}").status_code == 410


def test_a_failing_transaction_stores_nothing_and_names_the_entry(client, r4_validator):
    entries = [post_entry(medication()), post_entry(activity_definition()),
               post_entry(activity_definition(status="published"))]
    body = failed(transaction(client, entries), 400, r4_validator)
    assert "Bundle.entry[2].resource.status" in outcome_expressions(body)
    assert body["issue"][0]["diagnostics"].startswith("Bundle.entry[2] (POST ActivityDefinition)")
    assert count(client, "Medication") == 0 and count(client, "ActivityDefinition") == 0


def test_a_transaction_breaking_the_url_version_rule_fails_with_422(client, r4_validator):
    definition = activity_definition()
    body = failed(transaction(client, [post_entry(medication()), post_entry(definition), post_entry(definition)]),
                  422, r4_validator)
    assert body["issue"][0]["code"] == "duplicate"
    assert outcome_expressions(body) == ["Bundle.entry[2].resource.version"]
    assert count(client, "Medication") == 0 and count(client, "ActivityDefinition") == 0


def test_transaction_put_creates_a_new_id_and_needs_if_match_to_update_it(client, r4_validator):
    resource = activity_definition(id="bulk-loaded", title="first")
    put_entry = {"resource": resource, "request": {"method": "PUT", "url": "ActivityDefinition/bulk-loaded"}}
    (created,) = answered(transaction(client, [put_entry]), r4_validator, "transaction-response")
    assert created["response"]["status"] == "201 Created"
    assert created["response"]["location"] == "ActivityDefinition/bulk-loaded/_history/1"

    changed = {**put_entry, "resource": {**resource, "title": "second"}}
    body = failed(transaction(client, [changed]), 400, r4_validator)
    assert outcome_expressions(body) == ["Bundle.entry[0].request.ifMatch"]

    stale = {**changed, "request": {**changed["request"], "ifMatch": 'W/"7"'}}
    assert outcome_expressions(failed(transaction(client, [stale]), 412, r4_validator)) == [
        "Bundle.entry[0].request.ifMatch"]
    current = {**changed, "request": {**changed["request"], "ifMatch": 'W/"1"'}}
    (updated,) = answered(transaction(client, [current]), r4_validator, "transaction-response")
    assert updated["response"]["status"] == "200 OK" and updated["resource"]["title"] == "second"
    assert updated["response"]["etag"] == 'W/"2"'


def test_transaction_put_whose_resource_id_differs_from_the_url_is_400(client, r4_validator):
    entry = {"resource": activity_definition(id="a"), "request": {"method": "PUT", "url": "ActivityDefinition/b"}}
    assert outcome_expressions(failed(transaction(client, [entry]), 400, r4_validator)) == [
        "Bundle.entry[0].resource.id"]


def test_conditional_create_creates_once_then_returns_the_match(client, r4_validator):
    definition = activity_definition()
    condition = f"url={definition['url']}&version=1.0.0"
    (first,) = answered(transaction(client, [post_entry(definition, ifNoneExist=condition)]), r4_validator,
                        "transaction-response")
    assert first["response"]["status"] == "201 Created"
    (again,) = answered(transaction(client, [post_entry(definition, ifNoneExist=condition)]), r4_validator,
                        "transaction-response")
    assert again["response"]["status"] == "200 OK"
    assert again["resource"]["id"] == first["resource"]["id"]
    assert count(client, "ActivityDefinition") == 1


def test_conditional_create_gives_a_placeholder_the_id_of_the_match(client, r4_validator):
    existing = create(client, medication())
    code = existing["code"]["coding"][0]
    definition = activity_definition(productReference={"reference": MEDICATION_URN})
    entries = [post_entry(definition),
               post_entry(medication(), MEDICATION_URN, ifNoneExist=f"code={code['system']}|{code['code']}")]
    stored, matched = answered(transaction(client, entries), r4_validator, "transaction-response")
    assert matched["response"]["status"] == "200 OK"
    assert stored["resource"]["productReference"] == {"reference": f"Medication/{existing['id']}"}


def test_conditional_create_matching_several_resources_fails_with_412(client, r4_validator):
    topic = [{"coding": [{"system": f"{TEST_BASE}/topic", "code": "twice"}]}]
    create(client, activity_definition(topic=topic))
    create(client, activity_definition(topic=topic))
    entry = post_entry(activity_definition(), ifNoneExist=f"topic={TEST_BASE}/topic|twice")
    body = failed(transaction(client, [entry]), 412, r4_validator)
    assert outcome_expressions(body) == ["Bundle.entry[0].request.ifNoneExist"]


def test_conditional_create_on_an_unknown_parameter_is_400(client, r4_validator):
    entry = post_entry(activity_definition(), ifNoneExist="colour=blue")
    assert outcome_expressions(failed(transaction(client, [entry]), 400, r4_validator)) == [
        "Bundle.entry[0].request.ifNoneExist"]


def test_a_transaction_may_not_modify_one_resource_twice(client, r4_validator):
    existing = create(client, activity_definition())
    url = f"ActivityDefinition/{existing['id']}"
    entries = [{"request": {"method": "DELETE", "url": url}},
               {"resource": existing, "request": {"method": "PUT", "url": url, "ifMatch": 'W/"1"'}}]
    failed(transaction(client, entries), 400, r4_validator)
    assert client.get(f"/fhir/{url}").status_code == 200


def test_transaction_delete_of_an_unknown_resource_fails_with_404(client, r4_validator):
    entries = [post_entry(medication()), {"request": {"method": "DELETE", "url": "Medication/ghost"}}]
    body = failed(transaction(client, entries), 404, r4_validator)
    assert outcome_expressions(body)[0].startswith("Bundle.entry[1]")
    assert count(client, "Medication") == 0


def test_transaction_get_entries_read_vread_and_history(client, r4_validator):
    existing = create(client, activity_definition())
    url = f"ActivityDefinition/{existing['id']}"
    entries = [{"request": {"method": "GET", "url": url}},
               {"request": {"method": "GET", "url": f"{url}/_history/1"}},
               {"request": {"method": "GET", "url": f"{url}/_history"}},
               {"request": {"method": "GET", "url": url, "ifNoneMatch": 'W/"1"'}}]
    read, vread, history, not_modified = answered(transaction(client, entries), r4_validator, "transaction-response")
    assert read["resource"] == vread["resource"] == existing
    assert read["response"]["etag"] == 'W/"1"' and "location" not in read["response"]
    assert history["resource"]["type"] == "history"
    assert not_modified["response"]["status"] == "304 Not Modified" and "resource" not in not_modified


def test_prefer_return_minimal_leaves_the_resources_out(client, r4_validator):
    response = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction",
                                          "entry": [post_entry(medication())]},
                           headers={**FHIR_JSON, "Prefer": "return=minimal"})
    (entry,) = answered(response, r4_validator, "transaction-response")
    assert "resource" not in entry and entry["response"]["location"].startswith("Medication/")


# ---------------------------------------------------------------------- batch


def test_batch_entries_succeed_or_fail_independently(client, r4_validator):
    entries = [post_entry(medication()), post_entry(activity_definition(status="published")),
               post_entry(activity_definition()),
               {"request": {"method": "DELETE", "url": "ActivityDefinition/ghost"}},
               {"request": {"method": "GET", "url": "Medication/ghost"}}]
    statuses = [e["response"]["status"] for e in answered(transaction(client, entries, "batch"), r4_validator,
                                                           "batch-response")]
    assert statuses == ["201 Created", "400 Bad Request", "201 Created", "404 Not Found", "404 Not Found"]
    assert count(client, "Medication") == 1 and count(client, "ActivityDefinition") == 1


def test_a_failed_batch_entry_carries_its_outcome_naming_the_entry(client, r4_validator):
    definition = activity_definition()
    entries = [post_entry(definition), post_entry(definition)]
    ok, clash = answered(transaction(client, entries, "batch"), r4_validator, "batch-response")
    assert ok["response"]["status"] == "201 Created"
    assert clash["response"]["status"].startswith("422 Unprocessable")
    assert "resource" not in clash
    outcome = clash["response"]["outcome"]
    assert outcome["issue"][0]["code"] == "duplicate"
    assert outcome_expressions(outcome) == ["Bundle.entry[1].resource.version"]


def test_batch_does_not_rewrite_placeholders(client, r4_validator):
    entries = [post_entry(medication(), MEDICATION_URN),
               post_entry(activity_definition(productReference={"reference": MEDICATION_URN}))]
    _, definition = answered(transaction(client, entries, "batch"), r4_validator, "batch-response")
    assert definition["resource"]["productReference"] == {"reference": MEDICATION_URN}


def test_batch_search_entry_answers_a_searchset(client, r4_validator):
    existing = create(client, activity_definition())
    entries = [{"request": {"method": "GET", "url": f"ActivityDefinition?name={existing['name']}&colour=blue"}}]
    (search,) = answered(transaction(client, entries, "batch"), r4_validator, "batch-response")
    modes = [e["search"]["mode"] for e in search["resource"]["entry"]]
    assert search["resource"]["type"] == "searchset" and modes == ["match", "outcome"]


@pytest.mark.parametrize(("entry", "status", "expression"), [
    ({"resource": {"resourceType": "Medication"}}, 400, "Bundle.entry[0].request"),
    ({"request": {"method": "POST", "url": "Medication"}}, 400, "Bundle.entry[0].resource"),
    ({"request": {"method": "PATCH", "url": "Medication/x"}}, 405, "Bundle.entry[0].request.method"),
    ({"request": {"method": "PUT", "url": "Medication?code=x"}, "resource": {"resourceType": "Medication"}},
     400, "Bundle.entry[0].request.url"),
    ({"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient"}},
     404, "Bundle.entry[0].request.url"),
    ({"request": {"method": "POST", "url": "Medication"}, "resource": {"resourceType": "Patient"}},
     400, "Bundle.entry[0].resource.resourceType"),
    ({"request": {"method": "GET", "url": "Medication/not_an*id"}}, 400, "Bundle.entry[0].request.url"),
    ({"request": {"method": "GET", "url": "Medication/_history"}}, 400, "Bundle.entry[0].request.url"),
    ({"request": {"method": "GET", "url": "medication/x"}}, 400, "Bundle.entry[0].request.url"),
    ({"request": {"method": "GET", "url": "Medication/x?_elements=code"}}, 400, "Bundle.entry[0].request.url"),
    ({"request": {"method": "POST", "url": "Medication/$validate"}, "resource": {"resourceType": "Medication"}},
     400, "Bundle.entry[0].request.url"),
])
def test_a_malformed_entry_fails_the_transaction_and_only_itself_in_a_batch(
        client, r4_validator, entry, status, expression):
    body = failed(transaction(client, [entry]), status, r4_validator)
    assert expression in outcome_expressions(body)
    (answer,) = answered(transaction(client, [entry], "batch"), r4_validator, "batch-response")
    assert answer["response"]["status"].startswith(str(status))
    assert expression in outcome_expressions(answer["response"]["outcome"])


# ---------------------------------------------------------------------- the envelope


@pytest.mark.parametrize("body", [
    {"resourceType": "Bundle", "type": "collection", "entry": []},
    {"resourceType": "Bundle", "type": "searchset"},
    {"resourceType": "Bundle"},
    {"resourceType": "Parameters"},
])
def test_posting_anything_but_a_batch_or_transaction_bundle_is_400(client, r4_validator, body):
    failed(client.post("/fhir", json=body, headers=FHIR_JSON), 400, r4_validator)


def test_an_empty_transaction_answers_an_empty_response(client, r4_validator):
    response = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction"}, headers=FHIR_JSON)
    assert response.status_code == 200
    r4_validator.assert_valid(response.content)
    assert response.json() == {"resourceType": "Bundle", "type": "transaction-response"}
