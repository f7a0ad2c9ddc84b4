"""Catalog REST: read, vread, history, versioning, conditional reads, writes and their errors.

Every test runs on SQLite and on PostgreSQL (the `database_url` fixture) against a
fresh database, and every body the catalog answers is checked by the R4 validator.
"""

from __future__ import annotations

from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.catalog.factories import TEST_BASE, activity_definition, catalog, create, outcome_expressions, put
from tests.support.apps import FHIR_JSON
from tests.support.r4 import R4Validator


@pytest.fixture
def client(database_url: str, r4_validator: R4Validator) -> Iterator[TestClient]:
    with catalog(database_url, r4_validator) as client:
        yield client


def error(response: Any, status: int, r4_validator: R4Validator, code: str | None = None) -> dict[str, Any]:
    """Assert an OperationOutcome error with this status (and issue code); return it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    r4_validator.assert_valid(body)
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] in ("error", "fatal")
    if code:
        assert body["issue"][0]["code"] == code, body
    return body  # type: ignore[no-any-return]


# ---------------------------------------------------------------------- create and read


def test_create_answers_201_with_location_etag_and_last_modified(client: TestClient, r4_validator: R4Validator):
    response = client.post("/fhir/ActivityDefinition", json=activity_definition(), headers=FHIR_JSON)
    assert response.status_code == 201
    body = response.json()
    r4_validator.assert_valid(body)
    assert body["meta"]["versionId"] == "1"
    assert response.headers["location"].endswith(f"/fhir/ActivityDefinition/{body['id']}/_history/1")
    assert response.headers["etag"] == 'W/"1"'
    assert parsedate_to_datetime(response.headers["last-modified"]).tzinfo is not None


def test_create_ignores_a_client_supplied_id(client: TestClient):
    body = create(client, activity_definition(id="chosen-by-client"))
    assert body["id"] != "chosen-by-client"


def test_read_serves_the_stored_bytes_with_etag_and_last_modified(client: TestClient, r4_validator: R4Validator):
    created = create(client, activity_definition(title="Cryomassage"))
    response = client.get(f"/fhir/ActivityDefinition/{created['id']}")
    assert response.status_code == 200
    assert response.json() == created
    r4_validator.assert_valid(response.content)
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["content-type"] == "application/fhir+json; charset=utf-8"
    assert "last-modified" in response.headers


def test_read_answers_304_when_if_none_match_names_the_current_version(client: TestClient):
    created = create(client, activity_definition())
    url = f"/fhir/ActivityDefinition/{created['id']}"
    not_modified = client.get(url, headers={"If-None-Match": 'W/"1"'})
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified.headers["etag"] == 'W/"1"'
    assert put(client, created, 1).status_code == 200
    assert client.get(url, headers={"If-None-Match": 'W/"1"'}).status_code == 200


def test_if_none_match_lists_and_star_answer_304_on_reads_and_searches(client: TestClient):
    created = create(client, activity_definition())
    url = f"/fhir/ActivityDefinition/{created['id']}"
    assert client.get(url, headers={"If-None-Match": 'W/"7", "1"'}).status_code == 304
    assert client.get(url, headers={"If-None-Match": "*"}).status_code == 304
    assert client.get(url, headers={"If-None-Match": 'W/"7", W/"8"'}).status_code == 200
    search = client.get("/fhir/ActivityDefinition")
    tag = search.headers["etag"]
    assert client.get("/fhir/ActivityDefinition", headers={"If-None-Match": f'W/"x", {tag}'}).status_code == 304


def test_read_answers_304_when_not_modified_since_its_last_update(client: TestClient):
    created = create(client, activity_definition())
    url = f"/fhir/ActivityDefinition/{created['id']}"
    last_modified = client.get(url).headers["last-modified"]
    assert client.get(url, headers={"If-Modified-Since": last_modified}).status_code == 304
    assert client.get(url, headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 200
    assert client.get(url, headers={"If-Modified-Since": "not a date"}).status_code == 200
    both = {"If-Modified-Since": last_modified, "If-None-Match": 'W/"9"'}
    assert client.get(url, headers=both).status_code == 200  # If-None-Match decides


def test_head_answers_as_the_read_without_a_body(client: TestClient, r4_validator: R4Validator):
    created = create(client, activity_definition())
    url = f"/fhir/ActivityDefinition/{created['id']}"
    read = client.get(url)
    head = client.head(url)
    assert head.status_code == 200
    assert head.content == b""
    for name in ("etag", "last-modified", "content-type", "content-length"):
        assert head.headers[name] == read.headers[name]
    assert client.head(url, headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert client.head("/fhir/ActivityDefinition/does-not-exist").status_code == 404


def test_read_urls_with_empty_segments_are_not_reads(client: TestClient):
    created = create(client, activity_definition())
    url = f"/fhir/ActivityDefinition/{created['id']}"
    assert client.get(url + "/", follow_redirects=False).status_code == 307
    assert client.get(url.replace("/fhir/", "/fhir//"), follow_redirects=False).status_code == 404
    assert client.get(url.replace(f"/{created['id']}", f"//{created['id']}"), follow_redirects=False).status_code == 404


def test_read_of_an_unknown_id_is_404(client: TestClient, r4_validator: R4Validator):
    error(client.get("/fhir/ActivityDefinition/does-not-exist"), 404, r4_validator, "not-found")


def test_read_of_a_malformed_id_is_400(client: TestClient, r4_validator: R4Validator):
    error(client.get("/fhir/ActivityDefinition/bad_id!"), 400, r4_validator)


def test_a_type_the_catalog_does_not_serve_is_404(client: TestClient, r4_validator: R4Validator):
    error(client.get("/fhir/Patient/123"), 404, r4_validator, "not-supported")


# ---------------------------------------------------------------------- versions and history


def test_every_update_makes_a_new_version_and_history_lists_them_newest_first(
        client: TestClient, r4_validator: R4Validator):
    created = create(client, activity_definition(title="v1"))
    for version in (1, 2):
        response = put(client, {**created, "title": f"v{version + 1}"}, version)
        assert response.status_code == 200, response.text
        assert response.headers["etag"] == f'W/"{version + 1}"'
        assert response.json()["meta"]["versionId"] == str(version + 1)

    history = client.get(f"/fhir/ActivityDefinition/{created['id']}/_history")
    assert history.status_code == 200
    r4_validator.assert_valid(history.content)
    bundle = history.json()
    assert bundle["type"] == "history" and bundle["total"] == 3
    assert [e["resource"]["meta"]["versionId"] for e in bundle["entry"]] == ["3", "2", "1"]
    assert [e["resource"]["title"] for e in bundle["entry"]] == ["v3", "v2", "v1"]
    assert [e["request"]["method"] for e in bundle["entry"]] == ["PUT", "PUT", "POST"]
    for version in (1, 2, 3):
        vread = client.get(f"/fhir/ActivityDefinition/{created['id']}/_history/{version}")
        assert vread.status_code == 200
        assert vread.json()["title"] == f"v{version}"
        assert vread.headers["etag"] == f'W/"{version}"'


def test_vread_of_a_version_that_does_not_exist_is_404(client: TestClient, r4_validator: R4Validator):
    created = create(client, activity_definition())
    error(client.get(f"/fhir/ActivityDefinition/{created['id']}/_history/7"), 404, r4_validator)


def test_history_of_an_unknown_resource_is_404(client: TestClient, r4_validator: R4Validator):
    error(client.get("/fhir/ActivityDefinition/nobody/_history"), 404, r4_validator)


# ---------------------------------------------------------------------- update rules


def test_update_without_if_match_is_400(client: TestClient, r4_validator: R4Validator):
    created = create(client, activity_definition())
    response = client.put(f"/fhir/ActivityDefinition/{created['id']}", json=created, headers=FHIR_JSON)
    body = error(response, 400, r4_validator, "required")
    assert outcome_expressions(body) == ["If-Match"]


def test_update_with_a_stale_if_match_is_412_and_changes_nothing(client: TestClient, r4_validator: R4Validator):
    created = create(client, activity_definition(title="first"))
    assert put(client, {**created, "title": "second"}, 1).status_code == 200
    error(put(client, {**created, "title": "lost update"}, 1), 412, r4_validator)
    assert client.get(f"/fhir/ActivityDefinition/{created['id']}").json()["title"] == "second"


def test_update_whose_body_id_differs_from_the_url_is_400(client: TestClient, r4_validator: R4Validator):
    created = create(client, activity_definition())
    response = client.put(f"/fhir/ActivityDefinition/{created['id']}", json={**created, "id": "other"},
                          headers={**FHIR_JSON, "If-Match": 'W/"1"'})
    error(response, 400, r4_validator)


def test_update_of_an_unknown_resource_is_404(client: TestClient, r4_validator: R4Validator):
    error(put(client, activity_definition(id="never-created"), 1), 404, r4_validator)


def test_an_invalid_resource_is_400_naming_the_element(client: TestClient, r4_validator: R4Validator):
    response = client.post("/fhir/ActivityDefinition", json=activity_definition(status="published"),
                           headers=FHIR_JSON)
    body = error(response, 400, r4_validator)
    assert "ActivityDefinition.status" in outcome_expressions(body)


@pytest.mark.parametrize(("field", "value"), [("topic", []), ("purpose", None), ("code", {}),
                                            ("jurisdiction", [{}])])
def test_empty_arrays_objects_and_nulls_are_400_naming_the_element(client, r4_validator, field, value):
    response = client.post("/fhir/ActivityDefinition", json=activity_definition(**{field: value}), headers=FHIR_JSON)
    body = error(response, 400, r4_validator, "structure")
    assert outcome_expressions(body)[0].startswith(f"ActivityDefinition.{field}")


def test_a_body_of_another_type_is_400(client: TestClient, r4_validator: R4Validator):
    response = client.post("/fhir/PlanDefinition", json=activity_definition(), headers=FHIR_JSON)
    error(response, 400, r4_validator)


def test_a_body_that_is_not_fhir_json_is_415(client: TestClient, r4_validator: R4Validator):
    response = client.post("/fhir/ActivityDefinition", content=b"<ActivityDefinition/>",
                           headers={"content-type": "application/fhir+xml"})
    error(response, 415, r4_validator)


# ---------------------------------------------------------------------- delete


def test_delete_makes_reads_answer_410_and_history_records_it(client: TestClient, r4_validator: R4Validator):
    created = create(client, activity_definition())
    url = f"/fhir/ActivityDefinition/{created['id']}"
    deleted = client.delete(url)
    assert deleted.status_code == 200
    r4_validator.assert_valid(deleted.content)
    error(client.get(url), 410, r4_validator, "deleted")
    history = client.get(f"{url}/_history").json()
    r4_validator.assert_valid(history)
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
    assert "resource" not in history["entry"][0]
    assert client.get(f"{url}/_history/1").status_code == 200
    search = client.get("/fhir/ActivityDefinition", params={"_id": created["id"]}).json()
    assert "entry" not in search


def test_delete_of_an_unknown_resource_is_404(client: TestClient, r4_validator: R4Validator):
    error(client.delete("/fhir/ActivityDefinition/never-there"), 404, r4_validator)


# ---------------------------------------------------------------------- url + version business rule


def test_a_second_resource_with_the_same_url_and_version_is_422(client: TestClient, r4_validator: R4Validator):
    first = create(client, activity_definition())
    clash = {k: v for k, v in first.items() if k not in ("id", "meta")}
    body = error(client.post("/fhir/ActivityDefinition", json=clash, headers=FHIR_JSON), 422, r4_validator,
                 "duplicate")
    assert first["id"] in body["issue"][0]["diagnostics"]
    assert create(client, {**clash, "version": "2.0.0"})["version"] == "2.0.0"


def test_an_update_may_not_take_the_url_and_version_of_another_resource(
        client: TestClient, r4_validator: R4Validator):
    first = create(client, activity_definition())
    second = create(client, activity_definition())
    stolen = {**second, "url": first["url"]}
    error(put(client, stolen, 1), 422, r4_validator, "duplicate")


def test_the_same_url_may_be_reused_once_the_holder_is_deleted(client: TestClient):
    first = create(client, activity_definition())
    assert client.delete(f"/fhir/ActivityDefinition/{first['id']}").status_code == 200
    create(client, {k: v for k, v in first.items() if k not in ("id", "meta")})


# ---------------------------------------------------------------------- $validate


def test_validate_answers_the_outcome_a_create_would_give_and_stores_nothing(
        client: TestClient, r4_validator: R4Validator):
    name = "ValidateOnly"
    fine = client.post("/fhir/ActivityDefinition/$validate", json=activity_definition(name), headers=FHIR_JSON)
    assert fine.status_code == 200
    r4_validator.assert_valid(fine.content)
    assert fine.json()["issue"][0]["severity"] == "information"

    wrapped = {"resourceType": "Parameters",
               "parameter": [{"name": "resource", "resource": activity_definition(name, status="bogus")}]}
    invalid = client.post("/fhir/ActivityDefinition/$validate", json=wrapped, headers=FHIR_JSON)
    r4_validator.assert_valid(invalid.content)
    assert invalid.json()["issue"][0]["severity"] == "error"
    assert "ActivityDefinition.status" in outcome_expressions(invalid.json())

    search = client.get("/fhir/ActivityDefinition", params={"name": name, "_summary": "count"}).json()
    assert search["total"] == 0


def test_validate_reports_a_url_and_version_clash_without_storing(client: TestClient, r4_validator: R4Validator):
    first = create(client, activity_definition(url=f"{TEST_BASE}/ActivityDefinition/clash"))
    candidate = {k: v for k, v in first.items() if k not in ("id", "meta")}
    response = client.post("/fhir/ActivityDefinition/$validate", json=candidate, headers=FHIR_JSON)
    r4_validator.assert_valid(response.content)
    assert response.json()["issue"][0]["code"] == "duplicate"
    total = client.get("/fhir/ActivityDefinition", params={"_summary": "count"}).json()["total"]
    assert total == 1
