"""Single-resource interactions: create, read, vread, update, search, and their errors."""

from __future__ import annotations

import pytest

from tests.sandbox.conftest import careplan, issue_text

pytestmark = pytest.mark.sandbox


def test_create_answers_201_with_location_etag_and_the_stored_resource(fhir):
    response = fhir.post("/CarePlan", careplan())

    assert response.status_code == 201
    body = response.json()
    assert body["resourceType"] == "CarePlan"
    assert body["meta"]["versionId"] == "1"
    assert response.headers["location"] == f"{fhir.http.base_url}CarePlan/{body['id']}/_history/1"
    assert response.headers["etag"] == 'W/"1"'
    assert "last-modified" in response.headers


def test_create_assigns_the_server_id_and_version_even_when_the_client_sends_them(ehr_sandbox, fhir):
    sent = careplan(id="client-chosen", meta={"versionId": "42", "lastUpdated": "2001-01-01T00:00:00Z"})

    body = fhir.post("/CarePlan", sent).json()

    assert body["id"] != "client-chosen"
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"] != "2001-01-01T00:00:00Z"
    assert fhir.get("/CarePlan/client-chosen").status_code == 404
    assert [r["id"] for r in ehr_sandbox.store("CarePlan")] == [body["id"]]


def test_read_returns_the_current_version_with_etag(fhir):
    created = fhir.post("/CarePlan", careplan()).json()

    response = fhir.get(f"/CarePlan/{created['id']}")

    assert response.status_code == 200
    assert response.json() == created
    assert response.headers["etag"] == 'W/"1"'


def test_update_creates_a_new_version_and_vread_returns_each_version(fhir):
    created = fhir.post("/CarePlan", careplan()).json()
    changed = {**created, "status": "completed"}

    updated = fhir.put(f"/CarePlan/{created['id']}", changed)

    assert updated.status_code == 200
    assert updated.json()["meta"]["versionId"] == "2"
    assert updated.headers["etag"] == 'W/"2"'
    assert fhir.get(f"/CarePlan/{created['id']}").json()["status"] == "completed"
    assert fhir.get(f"/CarePlan/{created['id']}/_history/1").json()["status"] == "active"
    assert fhir.get(f"/CarePlan/{created['id']}/_history/2").json()["status"] == "completed"
    assert fhir.get(f"/CarePlan/{created['id']}/_history/3").status_code == 404


def test_update_with_a_stale_if_match_is_412(fhir):
    created = fhir.post("/CarePlan", careplan()).json()
    fhir.put(f"/CarePlan/{created['id']}", {**created, "status": "completed"})

    response = fhir.put(f"/CarePlan/{created['id']}", {**created, "status": "revoked"}, headers={"If-Match": 'W/"1"'})

    assert response.status_code == 412
    assert response.json()["resourceType"] == "OperationOutcome"


def test_update_of_an_unknown_id_creates_it_with_201(fhir):
    response = fhir.put("/CarePlan/cp-upsert", careplan(id="cp-upsert"))

    assert response.status_code == 201
    assert fhir.get("/CarePlan/cp-upsert").json()["meta"]["versionId"] == "1"


def test_update_with_a_body_id_different_from_the_url_is_400(fhir):
    response = fhir.put("/CarePlan/one", careplan(id="two"))

    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


def test_search_by_identifier_returns_a_searchset_with_self_link_and_full_urls(fhir):
    wanted = fhir.post("/CarePlan", careplan("qr-a")).json()
    fhir.post("/CarePlan", careplan("qr-b"))

    response = fhir.get("/CarePlan", params={"identifier": "https://example.org/fhir/careplan-id|qr-a"})

    assert response.status_code == 200
    bundle = response.json()
    assert bundle["type"] == "searchset"
    assert bundle["total"] == 1
    assert bundle["link"][0]["relation"] == "self"
    [entry] = bundle["entry"]
    assert entry["resource"]["id"] == wanted["id"]
    assert entry["fullUrl"] == f"{fhir.http.base_url}CarePlan/{wanted['id']}"
    assert entry["search"]["mode"] == "match"


def test_search_by_tag_subject_and_status(fhir):
    fhir.post("/CarePlan", careplan("qr-a", meta={"tag": [{"system": "https://t.example", "code": "x"}]}))
    fhir.post("/CarePlan", careplan("qr-b", status="draft", subject={"reference": "Patient/p2"}))

    def total(**params):
        return fhir.get("/CarePlan", params=params).json()["total"]

    assert total(_tag="https://t.example|x") == 1
    assert total(subject="Patient/p2") == 1
    assert total(status="active") == 1
    assert total() == 2


def test_search_pages_with_count_and_a_next_link(fhir):
    for n in range(3):
        fhir.post("/CarePlan", careplan(f"qr-{n}"))

    bundle = fhir.get("/CarePlan", params={"_count": "2"}).json()

    assert bundle["total"] == 3
    assert len(bundle["entry"]) == 2
    next_url = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    assert len(fhir.get(next_url).json()["entry"]) == 1


def test_search_with_an_unknown_parameter_is_400_not_an_empty_result(fhir):
    fhir.post("/CarePlan", careplan())

    response = fhir.get("/CarePlan", params={"identifer": "https://example.org/fhir/careplan-id|assessment-qr1"})

    assert response.status_code == 400
    assert "identifer" in issue_text(response.json())


@pytest.mark.parametrize("param", ["_include", "_revinclude", "_elements", "_has:Provenance:target:agent"])
def test_search_features_the_server_does_not_implement_are_400(fhir, param):
    response = fhir.get("/CarePlan", params={param: "CarePlan:subject"})

    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


def test_create_of_a_structurally_invalid_resource_is_400_and_stores_nothing(ehr_sandbox, fhir):
    plan = careplan()
    del plan["intent"]

    response = fhir.post("/CarePlan", plan)

    assert response.status_code == 400
    assert "CarePlan.intent" in issue_text(response.json())
    assert ehr_sandbox.store() == []


def test_create_with_an_unknown_property_is_400(fhir):
    response = fhir.post("/CarePlan", careplan(subjectCanonical="x"))

    assert response.status_code == 400
    assert "subjectCanonical" in issue_text(response.json())


def test_update_is_validated_too(fhir):
    created = fhir.post("/CarePlan", careplan()).json()

    response = fhir.put(f"/CarePlan/{created['id']}", {**created, "activity": [{"detail": {"kind": "Procedure"}}]})

    assert response.status_code == 400
    assert fhir.get(f"/CarePlan/{created['id']}").json()["meta"]["versionId"] == "1"


def test_create_with_a_body_of_another_type_is_400(fhir):
    response = fhir.post("/Patient", careplan())

    assert response.status_code == 400


def test_read_of_an_unknown_id_is_404_with_an_operation_outcome(fhir):
    response = fhir.get("/CarePlan/nope")

    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


def test_an_unknown_resource_type_is_404(fhir):
    response = fhir.get("/Careplan")

    assert response.status_code == 404
    assert "Careplan" in issue_text(response.json())


def test_a_body_that_is_not_json_is_400(fhir):
    response = fhir.http.post("/CarePlan", content=b"{not json", headers={"Content-Type": "application/fhir+json"})

    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


def test_a_body_that_is_not_fhir_json_is_415(fhir):
    response = fhir.http.post("/CarePlan", content=b"<CarePlan/>", headers={"Content-Type": "application/fhir+xml"})

    assert response.status_code == 415
    assert response.json()["resourceType"] == "OperationOutcome"


def test_asking_for_xml_is_406(fhir):
    assert fhir.get("/metadata", headers={"Accept": "application/fhir+xml"}).status_code == 406
    assert fhir.get("/metadata", params={"_format": "xml"}).status_code == 406
    assert fhir.get("/metadata", headers={"Accept": "application/json"}).status_code == 200


def test_interactions_the_server_does_not_offer_are_refused(fhir):
    assert fhir.get("", params={"_type": "CarePlan"}).status_code == 405  # search-system
    assert fhir.http.patch("/CarePlan/x", content=b"[]").status_code == 405


def test_prefer_return_minimal_answers_without_a_body(fhir):
    response = fhir.post("/CarePlan", careplan(), headers={"Prefer": "return=minimal"})

    assert response.status_code == 201
    assert response.content == b""
    assert "/CarePlan/" in response.headers["location"]


def test_delete_removes_the_resource(fhir):
    created = fhir.post("/CarePlan", careplan()).json()

    assert fhir.http.delete(f"/CarePlan/{created['id']}").status_code == 200
    assert fhir.get(f"/CarePlan/{created['id']}").status_code == 404
