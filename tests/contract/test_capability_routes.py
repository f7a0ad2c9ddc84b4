"""A service's CapabilityStatement, routes and access rules say the same: they come from one interaction table.

A declared interaction is routed when a request for it, on an id that does not exist and with an empty
body, is answered by the handler (404 not-found, 400, 200) rather than by routing: not 405, not
`not-supported`, not "No FHIR interaction". A declared operation is routed when a documented route whose path
names it (`$name`) takes its URL, at system, type or instance level. The other way round, every route under the
FHIR base (documented, or answering ahead of FastAPI) serves an interaction the statement declares, and every
entry of the table has an access rule."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.fhir.access import AccessPolicy
from services.fhir.auth import AccessMiddleware
from services.fhir.fastread import ReadRoute, SearchRoute
from services.fhir.interaction_table import InteractionTable
from services.fhir.routes import FhirRequest, parse
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


def _declares(rest: dict[str, Any], request: FhirRequest) -> bool:
    """Whether the statement's `rest` declares what `request` asks for."""
    if request.resource_type is None:
        if request.interaction == "batch":
            return bool({i["code"] for i in rest.get("interaction", [])} & {"batch", "transaction"})
        return request.operation in {o["name"] for o in rest.get("operation", [])}
    resource = next((r for r in rest["resource"] if r["type"] == request.resource_type), {})
    if request.interaction == "operation":
        return request.operation in {o["name"] for o in resource.get("operation", [])}
    return request.interaction in {i["code"] for i in resource.get("interaction", [])}


def _requests(method: str, template: str, types: list[str]) -> list[FhirRequest]:
    """The requests a route's path template takes: one per type where the type is a parameter."""
    paths = [template.replace("{resource_type}", t) for t in types] if "{resource_type}" in template else [template]
    parsed = [parse(method, re.sub(r"\{[a-z_]+\}", "x", p)) for p in paths]
    assert None not in parsed, f"{method} {template} is no FHIR interaction"
    return [request for request in parsed if request is not None]


def test_every_route_serves_a_declared_interaction(client: TestClient) -> None:
    """A route whose path takes the type from the URL declares its interaction for one type at least (the others
    it answers 404 not-supported)."""
    rest = client.get("/fhir/metadata").json()["rest"][0]
    types = [r["type"] for r in rest["resource"]]
    app: FastAPI = client.app  # type: ignore[assignment]  # TestClient.app is the app
    routed = [(method.upper(), path) for path, methods in app.openapi()["paths"].items()
              if path.startswith("/fhir") and path != "/fhir/metadata" for method in methods]
    routed += [("GET", route.path) for route in app.routes if isinstance(route, ReadRoute | SearchRoute)]
    undeclared = [f"{method} {path}" for method, path in routed
                  if not any(_declares(rest, r) for r in _requests(method, path, types))]
    assert undeclared == []
    fast = [route for route in app.routes if isinstance(route, ReadRoute)]
    assert fast and all(_declares(rest, FhirRequest("read", t, "x")) for route in fast for t in route.types)


def test_every_table_entry_has_an_access_rule(client: TestClient) -> None:
    app: FastAPI = client.app  # type: ignore[assignment]
    table: InteractionTable = app.state.table
    policy: AccessPolicy = next(m.kwargs["policy"] for m in app.user_middleware if m.cls is AccessMiddleware)
    for entry in table.entries:
        for request in _requests(entry.http_method, "/fhir" + entry.path, list(entry.types)):
            assert request.interaction == ("operation" if entry.is_operation else entry.interaction) or (
                request.interaction == "batch" and entry.interaction == "transaction"), entry.name
            assert policy.needs(request) or request.interaction == "batch", entry.name  # a Bundle: its entries'


@pytest.mark.parametrize(("segment", "status"), [("$no-such-operation", 404), ("_history", 404), ("_search", 405)])
def test_what_names_no_resource_of_a_served_type_is_refused_as_not_supported(
        client: TestClient, r4_validator: Any, segment: str, status: int) -> None:
    """Past the read route, `[type]/[segment]` where no FHIR id can be names nothing served: a clear 4xx."""
    served = next(r["type"] for r in client.get("/fhir/metadata").json()["rest"][0]["resource"]
                  if not any(i["code"] == "history-type" for i in r.get("interaction", [])))
    response = client.get(f"/fhir/{served}/{segment}", headers=FHIR_JSON)
    assert response.status_code == status
    outcome = response.json()
    r4_validator.assert_valid(response.content)
    assert outcome["issue"][0]["code"] == "not-supported"
