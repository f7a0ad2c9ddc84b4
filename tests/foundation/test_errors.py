"""Every error either service can produce is an OperationOutcome with the right status."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.support.apps import FHIR_JSON, careplan_app, catalog_app, running

SERVICES = {"catalog": "ActivityDefinition", "careplan": "CarePlan"}


@pytest.fixture(params=sorted(SERVICES))
def service(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def resource_type(service: str) -> str:
    """A resource type the service under test serves."""
    return SERVICES[service]


@pytest.fixture
def client(service: str, tmp_path) -> Iterator[TestClient]:
    url = f"sqlite:///{tmp_path}/errors.db"
    app = catalog_app(url, content_dir=None) if service == "catalog" else careplan_app(url)

    @app.get("/_boom", include_in_schema=False)
    def boom() -> None:
        raise RuntimeError("secret internal detail: Jane Doe 1980-01-01")

    with running(app) as test_client:
        yield test_client


def assert_outcome(response, status: int, r4_validator, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/fhir+json; charset=utf-8"
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert "detail" not in body
    assert body["issue"][0]["diagnostics"]
    if code:
        assert body["issue"][0]["code"] == code
    r4_validator.assert_valid(body)
    return body


def test_unknown_path_is_404_operation_outcome(client, r4_validator):
    assert_outcome(client.get("/no/such/path"), 404, r4_validator, "not-found")


def test_unknown_resource_type_is_404_operation_outcome(client, r4_validator):
    body = assert_outcome(client.get("/fhir/Patient/123"), 404, r4_validator)
    assert body["issue"][0]["expression"] == ["resourceType"]


def test_wrong_method_is_405_operation_outcome(client, r4_validator):
    assert_outcome(client.delete("/fhir/metadata"), 405, r4_validator, "not-supported")


def test_malformed_json_is_400_with_position(client, resource_type, r4_validator):
    response = client.post(f"/fhir/{resource_type}/$validate", content=b'{"resourceType": ', headers=FHIR_JSON)
    body = assert_outcome(response, 400, r4_validator, "structure")
    assert "not valid JSON" in body["issue"][0]["diagnostics"]


def test_body_of_two_megabytes_is_413_before_parsing(client, resource_type, r4_validator):
    response = client.post(f"/fhir/{resource_type}/$validate", content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                           headers=FHIR_JSON)
    assert_outcome(response, 413, r4_validator, "too-costly")


def test_streamed_body_over_the_limit_is_413(client, resource_type, r4_validator):
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b" " * 64 * 1024

    response = client.post(f"/fhir/{resource_type}/$validate", content=chunks(), headers=FHIR_JSON)
    assert_outcome(response, 413, r4_validator, "too-costly")


def test_unexpected_exception_is_500_without_internals(client, r4_validator):
    response = client.get("/_boom")
    body = assert_outcome(response, 500, r4_validator, "exception")
    assert "secret" not in response.text and "Traceback" not in response.text
    assert response.headers["x-request-id"] in body["issue"][0]["diagnostics"]


def test_unsupported_accept_is_406(client, r4_validator):
    assert_outcome(client.get("/fhir/metadata", headers={"accept": "application/fhir+xml"}), 406, r4_validator)


def test_format_xml_is_406_and_format_json_is_served(client, r4_validator):
    assert_outcome(client.get("/fhir/metadata?_format=xml"), 406, r4_validator)
    response = client.get("/fhir/metadata?_format=json", headers={"accept": "application/fhir+xml"})
    assert response.status_code == 200
    assert response.json()["resourceType"] == "CapabilityStatement"
    assert_outcome(client.get("/fhir/metadata?%5Fformat=xml"), 406, r4_validator)  # the name percent-encoded
    assert_outcome(client.get("/fhir/metadata?%5F%66ormat=xml"), 406, r4_validator)


def test_generic_json_accept_gets_fhir_json(client):
    response = client.get("/fhir/metadata", headers={"accept": "application/json"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/fhir+json; charset=utf-8"


def test_unsupported_body_media_type_is_415(client, resource_type, r4_validator):
    response = client.post(f"/fhir/{resource_type}/$validate", content=b"<xml/>",
                           headers={"content-type": "application/fhir+xml"})
    assert_outcome(response, 415, r4_validator, "not-supported")


def test_invalid_search_parameter_value_is_400_with_expression(client, resource_type, r4_validator):
    body = assert_outcome(client.get(f"/fhir/{resource_type}?_count=lots"), 400, r4_validator)
    assert body["issue"][0]["expression"] == ["_count"]


def test_every_response_names_its_request_id_and_forbids_sniffing(client):
    response = client.get("/fhir/metadata", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert response.headers["x-content-type-options"] == "nosniff"
