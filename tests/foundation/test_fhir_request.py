"""One parse of the FHIR URL per request, kept in the ASGI scope for every layer to read."""

from __future__ import annotations

import pytest

from services.fhir.routes import REQUEST_SCOPE_KEY, FhirRequest, InvalidId, fhir_request, parse_cached


def test_the_parse_the_edge_kept_is_what_every_layer_reads() -> None:
    kept = FhirRequest("read", "Patient", "kept")
    scope = {"type": "http", "method": "GET", "path": "/fhir/Patient/other", REQUEST_SCOPE_KEY: kept}
    assert fhir_request(scope) is kept


def test_a_request_that_did_not_cross_the_edge_is_parsed_once_and_kept() -> None:
    scope: dict[str, object] = {"type": "http", "method": "HEAD", "path": "/fhir/Patient/p1"}
    first = fhir_request(scope)
    assert first == FhirRequest("read", "Patient", "p1")
    assert scope[REQUEST_SCOPE_KEY] is first
    assert fhir_request({"type": "http", "method": "GET", "path": "/healthz"}) is None


def test_invalid_ids_raise_every_time_and_long_paths_are_not_kept() -> None:
    scope = {"type": "http", "method": "GET", "path": "/fhir/Patient/not_an_id!"}
    for _ in range(2):
        with pytest.raises(InvalidId):
            fhir_request(scope)
    long_path = "/fhir/Patient/" + "a" * 64 + "/_history/" + "1" * 200
    with pytest.raises(InvalidId):
        parse_cached("GET", long_path)
    assert parse_cached("GET", "/fhir/Patient/p1") is parse_cached("GET", "/fhir/Patient/p1")
