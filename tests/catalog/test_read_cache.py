"""The catalog's read cache (services/fhir/fastread.py): a write is seen by the very next read and search.

Reads by id and searches are answered from memory for CATALOG_READ_CACHE_SECONDS; these tests check
that whatever this process writes (create, update, delete, transaction) is never hidden behind it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.catalog.factories import activity_definition, catalog, create, put, unique
from tests.support.apps import FHIR_JSON
from tests.support.r4 import R4Validator


@pytest.fixture
def client(database_url: str, r4_validator: R4Validator) -> Iterator[TestClient]:
    with catalog(database_url, r4_validator) as client:
        yield client


def test_read_after_update_serves_the_new_version_although_the_old_one_was_cached(client: TestClient):
    created = create(client, activity_definition(title="Before"))
    path = f"/fhir/ActivityDefinition/{created['id']}"
    assert client.get(path).json()["title"] == "Before"  # now cached
    assert put(client, {**created, "title": "After"}, 1).status_code == 200
    response = client.get(path)
    assert response.json()["title"] == "After"
    assert response.headers["etag"] == 'W/"2"'


def test_read_after_delete_is_410_although_the_resource_was_cached(client: TestClient):
    created = create(client, activity_definition())
    path = f"/fhir/ActivityDefinition/{created['id']}"
    assert client.get(path).status_code == 200
    assert client.delete(path).status_code == 200
    assert client.get(path).status_code == 410


def test_search_after_create_finds_the_new_resource_although_the_search_was_cached(client: TestClient):
    name = unique()
    query = f"/fhir/ActivityDefinition?name={name}"
    assert "entry" not in client.get(query).json()  # an empty searchset, now cached
    created = create(client, activity_definition(name=name))
    entries = client.get(query).json()["entry"]
    assert [e["resource"]["id"] for e in entries] == [created["id"]]


def test_cached_search_answers_304_to_its_own_etag(client: TestClient):
    create(client, activity_definition(name=(name := unique())))
    first = client.get(f"/fhir/ActivityDefinition?name={name}")
    again = client.get(f"/fhir/ActivityDefinition?name={name}", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.headers["etag"] == first.headers["etag"]


def test_strict_handling_is_never_answered_from_the_cache(client: TestClient):
    assert client.get("/fhir/ActivityDefinition?unknown-param=1").status_code == 200  # warning, cached
    strict = client.get("/fhir/ActivityDefinition?unknown-param=1", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400


def test_transaction_writes_are_seen_by_the_next_read(client: TestClient):
    created = create(client, activity_definition(title="Before"))
    path = f"/fhir/ActivityDefinition/{created['id']}"
    client.get(path)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": {**created, "title": "In a transaction"},
        "request": {"method": "PUT", "url": f"ActivityDefinition/{created['id']}", "ifMatch": 'W/"1"'}}]}
    response = client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    assert client.get(path).json()["title"] == "In a transaction"


def test_a_cached_search_keeps_the_links_of_the_host_it_was_asked_at(client: TestClient):
    """Without a configured BASE_URL a search's links are made from the request's Host: a search cached for one
    host is never served to another, and each host's answer is cached on its own."""
    create(client, activity_definition(name=(name := unique())))
    query = f"/fhir/ActivityDefinition?name={name}"

    def links(host: str) -> set[str]:
        bundle = client.get(query, headers={"Host": host}).json()
        return {link["url"] for link in bundle["link"]} | {entry["fullUrl"] for entry in bundle["entry"]}

    first, other, again = links("ehr-a.example"), links("ehr-b.example:8443"), links("ehr-a.example")
    assert all(url.startswith("http://ehr-a.example/fhir/") for url in first)
    assert all(url.startswith("http://ehr-b.example:8443/fhir/") for url in other)
    assert again == first
