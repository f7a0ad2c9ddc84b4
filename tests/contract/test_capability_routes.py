"""Every interaction and operation a CapabilityStatement declares reaches a handler of the service.

A declared interaction is routed when a request for it, on an id that does not exist and with an empty
body, is answered by the handler (404 not-found, 400, 200) rather than by routing: not 405, not
`not-supported`, not "No FHIR interaction". A declared operation is routed when a documented route whose path
names it (`$name`) takes its URL, at system, type or instance level."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.support.apps import FHIR_JSON, careplan_app, catalog_app, running

REQUESTS = {
    "read": ("GET", "/fhir/{type}/no-such-id", None),
    "vread": ("GET", "/fhir/{type}/no-such-id/_history/1", None),
    "history-instance": ("GET", "/fhir/{type}/no-such-id/_history", None),
    "search-type": ("GET", "/fhir/{type}", None),
    "create": ("POST", "/fhir/{type}", b"{}"),
    "update": ("PUT", "/fhir/{type}/no-such-id", b"{}"),
    "patch": ("PATCH", "/fhir/{type}/no-such-id", b"[]"),
    "delete": ("DELETE", "/fhir/{type}/no-such-id", None),
}
SYSTEM_REQUESTS = {"batch": ("POST", "/fhir", b"{}"), "transaction": ("POST", "/fhir", b"{}")}


@pytest.fixture(params=["catalog", "careplan"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    url = f"sqlite:///{tmp_path}/{request.param}.db"
    app = catalog_app(url, content_dir=None) if request.param == "catalog" else careplan_app(url)
    with running(app) as client:
        yield client


def _answered_by_a_handler(client: TestClient, method: str, path: str, body: bytes | None) -> bool:
    response = client.request(method, path, content=body, headers=FHIR_JSON)
    issue: dict[str, Any] = response.json().get("issue", [{}])[0] if response.content else {}
    return (response.status_code != 405 and issue.get("code") != "not-supported"
            and not str(issue.get("diagnostics", "")).startswith("No FHIR interaction"))


def _operation_routed(app: FastAPI, name: str, paths: list[str]) -> bool:
    """Whether a documented route (the OpenAPI paths) whose template names `$name` takes one of `paths`."""
    templates = [t for t in app.openapi()["paths"] if f"${name}" in t]
    return any(re.fullmatch(re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(t)), path) for t in templates for path in paths)


def test_every_declared_interaction_and_operation_is_routed(client: TestClient) -> None:
    rest = client.get("/fhir/metadata").json()["rest"][0]
    unrouted = []
    for resource in rest["resource"]:
        kind = resource["type"]
        for interaction in (i["code"] for i in resource.get("interaction", [])):
            method, path, body = REQUESTS[interaction]
            if not _answered_by_a_handler(client, method, path.format(type=kind), body):
                unrouted.append(f"{interaction} {kind}")
        for operation in (o["name"] for o in resource.get("operation", [])):
            paths = [f"/fhir/{kind}/${operation}", f"/fhir/{kind}/no-such-id/${operation}"]
            if not _operation_routed(client.app, operation, paths):  # type: ignore[arg-type]  # TestClient.app is the app
                unrouted.append(f"${operation} {kind}")
    for interaction in (i["code"] for i in rest.get("interaction", [])):
        if not _answered_by_a_handler(client, *SYSTEM_REQUESTS[interaction]):
            unrouted.append(interaction)
    for operation in (o["name"] for o in rest.get("operation", [])):
        if not _operation_routed(client.app, operation, [f"/fhir/${operation}"]):  # type: ignore[arg-type]
            unrouted.append(f"${operation}")
    assert unrouted == []
