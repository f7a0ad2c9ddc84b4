"""Transaction and batch Bundles posted to [base]: atomic, validated, urn:uuid references rewritten."""

from __future__ import annotations

import copy
import re

import pytest

from tests.sandbox.conftest import careplan, delivery_transaction, issue_text, urn

pytestmark = pytest.mark.sandbox

LOCATION = re.compile(r"^(CarePlan|Provenance)/([A-Za-z0-9\-.]+)/_history/(\d+)$")


def test_transaction_creates_everything_and_answers_a_transaction_response(ehr_sandbox, fhir):
    response = fhir.post("", delivery_transaction())

    assert response.status_code == 200
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "transaction-response"
    assert len(bundle["entry"]) == 2
    for entry, expected_type in zip(bundle["entry"], ["CarePlan", "Provenance"], strict=True):
        answer = entry["response"]
        assert answer["status"] == "201 Created"
        assert LOCATION.match(answer["location"]).group(1) == expected_type
        assert answer["etag"] == 'W/"1"'
        assert answer["lastModified"]
    assert len(ehr_sandbox.store("CarePlan")) == 1
    assert len(ehr_sandbox.store("Provenance")) == 1


def test_transaction_rewrites_urn_uuid_references_to_the_new_ids(ehr_sandbox, fhir):
    bundle = fhir.post("", delivery_transaction()).json()

    plan_id = LOCATION.match(bundle["entry"][0]["response"]["location"]).group(2)
    [stored_provenance] = ehr_sandbox.store("Provenance")
    assert stored_provenance["target"] == [{"reference": f"CarePlan/{plan_id}"}]
    assert bundle["entry"][1]["resource"]["target"] == [{"reference": f"CarePlan/{plan_id}"}]


def test_transaction_rewrites_references_in_both_directions(ehr_sandbox, fhir):
    plan_urn, request_urn = urn(), urn()
    plan = careplan(activity=[{"reference": {"reference": request_urn}}])
    service_request = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "basedOn": [{"reference": plan_urn}],
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": plan_urn, "resource": plan, "request": {"method": "POST", "url": "CarePlan"}},
            {
                "fullUrl": request_urn,
                "resource": service_request,
                "request": {"method": "POST", "url": "ServiceRequest"},
            },
        ],
    }

    assert fhir.post("", bundle).status_code == 200

    [stored_plan] = ehr_sandbox.store("CarePlan")
    [stored_request] = ehr_sandbox.store("ServiceRequest")
    assert stored_plan["activity"][0]["reference"]["reference"] == f"ServiceRequest/{stored_request['id']}"
    assert stored_request["basedOn"][0]["reference"] == f"CarePlan/{stored_plan['id']}"


def test_transaction_ignores_client_ids_on_post_entries(ehr_sandbox, fhir):
    transaction = delivery_transaction()
    transaction["entry"][0]["resource"]["id"] = "client-chosen"

    fhir.post("", transaction)

    assert [r["id"] for r in ehr_sandbox.store("CarePlan")] != ["client-chosen"]


def test_transaction_repeated_creates_nothing_twice_and_answers_200_per_entry(ehr_sandbox, fhir):
    first = fhir.post("", delivery_transaction()).json()

    again = fhir.post("", delivery_transaction())

    assert again.status_code == 200
    assert [e["response"]["status"] for e in again.json()["entry"]] == ["200 OK", "200 OK"]
    assert [e["response"]["location"] for e in again.json()["entry"]] == [
        e["response"]["location"] for e in first["entry"]
    ]
    assert len(ehr_sandbox.store("CarePlan")) == 1
    assert len(ehr_sandbox.store("Provenance")) == 1


def test_transaction_with_invalid_entry_stores_nothing(ehr_sandbox, fhir):
    fhir.post("/CarePlan", careplan("already-there"))
    before = ehr_sandbox.store()
    transaction = delivery_transaction("qr-2")
    del transaction["entry"][0]["resource"]["intent"]

    response = fhir.post("", transaction)

    assert response.status_code == 400
    assert "CarePlan.intent" in issue_text(response.json())
    assert ehr_sandbox.store() == before


def test_transaction_whose_last_entry_is_invalid_rolls_back_the_entries_before_it(ehr_sandbox, fhir):
    transaction = delivery_transaction("qr-3")
    transaction["entry"][1]["resource"]["unknownElement"] = True

    response = fhir.post("", transaction)

    assert response.status_code == 400
    assert "Bundle.entry[1]" in issue_text(response.json())
    assert ehr_sandbox.store() == []


def test_transaction_with_an_unknown_if_none_exist_parameter_stores_nothing(ehr_sandbox, fhir):
    transaction = delivery_transaction()
    transaction["entry"][0]["request"]["ifNoneExist"] = "identifer=https://example.org/fhir/careplan-id|x"

    response = fhir.post("", transaction)

    assert response.status_code == 400
    assert "identifer" in issue_text(response.json())
    assert ehr_sandbox.store() == []


def test_transaction_with_a_misspelt_request_element_is_400(ehr_sandbox, fhir):
    transaction = delivery_transaction()
    request = transaction["entry"][0]["request"]
    request["ifNoneExists"] = request.pop("ifNoneExist")

    response = fhir.post("", transaction)

    assert response.status_code == 400
    assert "ifNoneExists" in issue_text(response.json())
    assert ehr_sandbox.store() == []


def test_transaction_whose_conditional_create_matches_several_is_412_and_stores_nothing(ehr_sandbox, fhir):
    fhir.post("/CarePlan", careplan("dup"))
    fhir.post("/CarePlan", careplan("dup"))
    before = ehr_sandbox.store()

    response = fhir.post("", delivery_transaction("dup"))

    assert response.status_code == 412
    assert ehr_sandbox.store() == before


def test_transaction_of_many_conditional_entries_is_accepted(ehr_sandbox, fhir):
    transaction = delivery_transaction()
    for n in range(10):
        entry = copy.deepcopy(transaction["entry"][0])
        entry["fullUrl"] = urn()
        entry["resource"] = careplan(f"extra-{n}")
        entry["request"]["ifNoneExist"] = f"identifier=https://example.org/fhir/careplan-id|extra-{n}"
        transaction["entry"].append(entry)

    response = fhir.post("", transaction)

    assert response.status_code == 200, response.text
    assert len(ehr_sandbox.store("CarePlan")) == 11


def test_transaction_response_honours_prefer_return_minimal(fhir):
    response = fhir.post("", delivery_transaction(), headers={"Prefer": "return=minimal"})

    assert response.status_code == 200
    assert all(set(entry) == {"response"} for entry in response.json()["entry"])


def test_a_bundle_that_is_neither_batch_nor_transaction_is_400(fhir):
    response = fhir.post("", {"resourceType": "Bundle", "type": "collection", "entry": []})

    assert response.status_code == 400


def test_batch_applies_valid_entries_and_reports_invalid_ones(ehr_sandbox, fhir):
    invalid = careplan("bad")
    del invalid["intent"]
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": careplan("good"), "request": {"method": "POST", "url": "CarePlan"}},
            {"resource": invalid, "request": {"method": "POST", "url": "CarePlan"}},
        ],
    }

    response = fhir.post("", batch)

    assert response.status_code == 200
    bundle = response.json()
    assert bundle["type"] == "batch-response"
    assert [e["response"]["status"] for e in bundle["entry"]] == ["201 Created", "400 Bad Request"]
    assert bundle["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert [r["identifier"][0]["value"] for r in ehr_sandbox.store("CarePlan")] == ["good"]
