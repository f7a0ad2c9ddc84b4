"""Hostile and malformed input is refused early with an OperationOutcome, on every route of both services.

Routes are enumerated from each service's OpenAPI document, so a route added later is covered too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from services.fhir.jsonio import MAX_JSON_DEPTH
from services.fhir.searchparams import MAX_COUNT, MAX_PARAM_VALUE_LENGTH
from tests.careplan.conftest import example
from tests.support.apps import FHIR_JSON, careplan_app, catalog_app, running

SERVED_TYPE = {"catalog": "ActivityDefinition", "careplan": "CarePlan"}
NOT_JSON = {"/fhir/{resource_type}/_search", "/fhir/Task/{resource_id}/$retry"}
"""Routes that take no JSON body (a form; nothing)."""
INVALID_IDS = ("bad!id", "x" * 65, "semi;colon", "space here", "ü-umlaut")


@pytest.fixture(scope="module")
def services(module_database_url: str, tmp_path_factory: pytest.TempPathFactory,
             catalog_url: str) -> Iterator[dict[str, TestClient]]:
    """Both services (auth off) with one stored plan; `ids` maps a path parameter to an existing id."""
    folder = tmp_path_factory.mktemp("bad-input")
    catalog = catalog_app(f"sqlite:///{folder}/catalog.db", LOG_LEVEL="WARNING")
    careplan = careplan_app(module_database_url, CATALOG_URL=catalog_url, LOG_LEVEL="WARNING", DISPATCHER="off")
    with running(catalog) as catalog_client, running(careplan) as careplan_client:
        yield {"catalog": catalog_client, "careplan": careplan_client}


@pytest.fixture(scope="module")
def plan_id(services: dict[str, TestClient]) -> str:
    response = services["careplan"].post("/fhir/CarePlan/$generate", json=example("atrophic-pregnant"),
                                         headers=FHIR_JSON)
    assert response.status_code == 201
    return str(response.json()["id"])


def operations(client: TestClient, methods: set[str]) -> Iterator[tuple[str, str]]:
    for path, ops in client.app.openapi()["paths"].items():
        for method in ops:
            if method in methods:
                yield path, method


def fill(path: str, service: str, value: str | None = None, ids: dict[str, str] | None = None) -> str:
    """A concrete URL for a path template: the service's main type, and `value` (or a known id) for ids."""
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "resource_type":
            return SERVED_TYPE[service]
        if name == "version_id":
            return "1"
        return value if value is not None else (ids or {}).get(name, "some-id")
    return re.sub(r"\{(\w+)\}", one, path)


def assert_outcome(response, status: int | None = None) -> dict[str, Any]:
    assert response.status_code < 500, (response.request.url, response.status_code, response.text[:300])
    if status is not None:
        assert response.status_code == status, (response.request.url, response.status_code, response.text[:300])
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return body


def deep(depth: int) -> bytes:
    nested: Any = "bottom"
    for _ in range(depth):
        nested = [nested]
    return orjson.dumps({"resourceType": "Parameters", "parameter": nested})


@pytest.mark.parametrize("service", ["catalog", "careplan"])
def test_every_json_body_route_refuses_deep_nesting(services, plan_id, service, r4_validator):
    client = services[service]
    checked = 0
    for path, method in operations(client, {"post", "put", "patch"}):
        if path in NOT_JSON:
            continue
        media = "application/json-patch+json" if method == "patch" else "application/fhir+json"
        url = fill(path, service, ids={"resource_id": plan_id, "service_id": "scar-plan"})
        response = client.request(method.upper(), url, content=deep(MAX_JSON_DEPTH + 40),
                                  headers={"content-type": media, "if-match": 'W/"1"'})
        body = assert_outcome(response, 400)
        assert "nests deeper" in body["issue"][0]["diagnostics"], (method, url, body)
        r4_validator.assert_valid(body)
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("service", ["catalog", "careplan"])
def test_bodies_over_the_limit_are_413_before_parsing(services, service, r4_validator):
    client = services[service]
    oversized = b"{" * (1024 * 1024 + 10)  # not JSON at all: a 400 would mean it was parsed
    for path, method in operations(client, {"post", "put", "patch"}):
        url = fill(path, service)
        response = client.request(method.upper(), url, content=oversized, headers=FHIR_JSON)
        r4_validator.assert_valid(assert_outcome(response, 413))

        def chunks() -> Iterator[bytes]:
            for _ in range(20):
                yield b"[" * 65536

        if path.endswith("$retry"):
            continue  # reads no body: nothing to stop
        media = {"_search": "application/x-www-form-urlencoded", "patch": "application/json-patch+json"}.get(
            "_search" if path.endswith("_search") else method, "application/fhir+json")
        streamed = client.request(method.upper(), url, content=chunks(),
                                  headers={"content-type": media, "if-match": 'W/"1"'})
        assert_outcome(streamed, 413)


@pytest.mark.parametrize("service", ["catalog", "careplan"])
def test_every_id_in_a_url_must_be_a_fhir_id(services, service, r4_validator):
    client = services[service]
    checked = 0
    for path, method in operations(client, {"get", "post", "put", "patch", "delete"}):
        if not re.search(r"\{(?!resource_type)\w+\}", path) or path.startswith("/cds-services"):
            continue  # CDS service ids are names, not FHIR ids: an unknown one is 404 (tests/cds)
        for invalid in INVALID_IDS:
            response = client.request(method.upper(), fill(path, service, invalid), content=b"{}", headers=FHIR_JSON)
            body = assert_outcome(response, 400)
            assert "not a valid FHIR id" in body["issue"][0]["diagnostics"], (path, body)
            checked += 1
    r4_validator.assert_valid(body)
    assert checked >= 6 * len(INVALID_IDS)


@pytest.mark.parametrize("service", ["catalog", "careplan"])
def test_search_values_are_length_limited_and_count_is_capped(services, service, r4_validator):
    client = services[service]
    resource_type = SERVED_TYPE[service]
    too_long = "x" * (MAX_PARAM_VALUE_LENGTH + 1)
    long_value = assert_outcome(client.get(f"/fhir/{resource_type}", params={"_id": too_long}), 400)
    r4_validator.assert_valid(long_value)
    capped = client.get(f"/fhir/{resource_type}", params={"_count": 10 ** 9})
    assert capped.status_code == 200
    assert f"_count={MAX_COUNT}" in next(link["url"] for link in capped.json()["link"] if link["relation"] == "self")
    assert_outcome(client.get(f"/fhir/{resource_type}", params={"_count": "-1"}), 400)


def test_every_response_forbids_sniffing_and_patient_data_is_never_cached(services, plan_id):
    careplan, catalog = services["careplan"], services["catalog"]
    for response in (careplan.get(f"/fhir/CarePlan/{plan_id}"), careplan.get("/fhir/CarePlan"),
                     careplan.get("/fhir/Task"), careplan.get("/fhir/CarePlan/unknown"),
                     careplan.get("/fhir/AuditEvent")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store", response.request.url
    metadata = careplan.get("/fhir/metadata")
    assert "cache-control" not in metadata.headers and metadata.headers["x-content-type-options"] == "nosniff"
    knowledge = catalog.get("/fhir/ActivityDefinition")
    assert knowledge.headers["x-content-type-options"] == "nosniff" and "cache-control" not in knowledge.headers


def test_cors_is_off_unless_origins_are_configured(services, database_url, issuer, jwks_file):
    preflight = {"Origin": "https://app.hospital.test", "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"}
    for client in services.values():
        assert "access-control-allow-origin" not in client.get("/fhir/metadata", headers=preflight).headers
        assert "access-control-allow-origin" not in client.options("/fhir/metadata", headers=preflight).headers
    app = catalog_app(database_url, content_dir=None, LOG_LEVEL="WARNING", CORS_ORIGINS="https://app.hospital.test",
                      **issuer.settings(jwks_file))
    with running(app) as client:
        allowed = client.options("/fhir/Medication", headers=preflight)  # no token: preflights carry none
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.hospital.test"
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        other = client.options("/fhir/Medication", headers=preflight | {"Origin": "https://evil.test"})
        assert other.headers.get("access-control-allow-origin") != "https://evil.test"
        actual = client.get("/fhir/Medication", headers={"Origin": "https://app.hospital.test"})
        assert actual.status_code == 401  # CORS is not authentication
        assert actual.headers["access-control-allow-origin"] == "https://app.hospital.test"


def test_a_nested_resource_whose_resource_type_is_not_a_name_is_400(services, r4_validator):
    """Found by fuzzing: the R4B models raised TypeError (a 500) on `"resourceType": {...}` inside Parameters."""
    parameters = example("striae-thigh")
    assessment = next(p for p in parameters["parameter"] if p["name"] == "assessment")["resource"]
    assessment["resourceType"] = {"value": "QuestionnaireResponse"}
    response = services["careplan"].post("/fhir/CarePlan/$generate", json=parameters, headers=FHIR_JSON)
    r4_validator.assert_valid(assert_outcome(response, 400))
    medication = {"resourceType": "Medication", "status": "active", "contained": [{"resourceType": ["Substance"]}]}
    for url in ("/fhir/Medication", "/fhir/Medication/$validate"):
        response = services["catalog"].post(url, json=medication, headers=FHIR_JSON)
        assert response.status_code in (200, 400), response.text
        assert_outcome(response)
