"""Test data and helpers shared by the catalog API tests.

Resources are small and built per test with unique names and canonical URLs under
`https://test.cicatrix.invalid/`, so tests never collide with each other or with the
shipped content, even when they share one app.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from fastapi.testclient import TestClient

from services.catalog.settings import CONTENT_DIR
from tests.support.apps import FHIR_JSON, catalog_app, running
from tests.support.r4 import R4Validator

TEST_BASE = "https://test.cicatrix.invalid"
SHIPPED_CONTENT = any(CONTENT_DIR.rglob("*.json"))
"""The shipped content is written alongside this code; end-to-end checks use it when it is there."""


def unique(prefix: str = "t") -> str:
    """A name no other test uses (letters and digits only, so it is a valid FHIR `name`)."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@contextmanager
def catalog(database_url: str, r4_validator: R4Validator, *, content: bool = False) -> Iterator[TestClient]:
    """A running catalog on `database_url`, with or without the shipped content.

    Every FHIR body it answers goes through the R4 validator on the way back, so no
    test can forget to check what the catalog emits."""
    with running(catalog_app(database_url, content_dir=CONTENT_DIR if content else None)) as client:
        client.event_hooks["response"].append(_validating(r4_validator))
        yield client


def _validating(r4_validator: R4Validator) -> Callable[[httpx.Response], None]:
    def check(response: httpx.Response) -> None:
        response.read()
        if response.content and response.headers.get("content-type", "").startswith("application/fhir+json"):
            r4_validator.assert_valid(response.content)
    return check


def activity_definition(name: str | None = None, **fields: Any) -> dict[str, Any]:
    name = name or unique("Activity")
    return {"resourceType": "ActivityDefinition", "url": f"{TEST_BASE}/ActivityDefinition/{name}",
            "version": "1.0.0", "name": name, "status": "active", "kind": "ServiceRequest", **fields}


def code_system(url: str, concepts: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    resource = {"resourceType": "CodeSystem", "url": url, "version": "1.0.0", "name": unique("System"),
                "status": "active", "content": "complete", **fields}
    if concepts:  # FHIR JSON has no empty arrays
        resource["concept"] = concepts
    return resource


def value_set(url: str, compose: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"resourceType": "ValueSet", "url": url, "version": "1.0.0", "name": unique("Set"),
            "status": "active", "compose": compose, **fields}


def create(client: TestClient, resource: dict[str, Any]) -> dict[str, Any]:
    """POST the resource and return what the catalog stored (fails the test unless 201)."""
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def put(client: TestClient, resource: dict[str, Any], version: str | int) -> Any:
    return client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource,
                      headers={**FHIR_JSON, "If-Match": f'W/"{version}"'})


def transaction(client: TestClient, entries: list[dict[str, Any]], kind: str = "transaction") -> Any:
    return client.post("/fhir", json={"resourceType": "Bundle", "type": kind, "entry": entries}, headers=FHIR_JSON)


def post_entry(resource: dict[str, Any], full_url: str | None = None, **request: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"resource": resource,
                             "request": {"method": "POST", "url": resource["resourceType"], **request}}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def outcome_expressions(body: dict[str, Any]) -> list[str]:
    assert body["resourceType"] == "OperationOutcome", body
    return [e for issue in body["issue"] for e in issue.get("expression", [])]


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == mode]


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((lk["url"] for lk in bundle.get("link", []) if lk["relation"] == relation), None)
