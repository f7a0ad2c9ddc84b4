"""What every fuzzed request must satisfy, and a way to see whether a rejected request stored anything."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text

from services.fhir.deps import ServiceContext

STORED_ROWS = {
    "catalog": "SELECT (SELECT count(*) FROM catalog_resource_version) + (SELECT count(*) FROM catalog_search_index)",
    "careplan": "SELECT (SELECT count(*) FROM careplan_resource_version WHERE resource_type <> 'AuditEvent')"
                " + (SELECT count(*) FROM careplan_delivery) + (SELECT count(*) FROM careplan_assessment_plan)",
}
"""Rows a request may only add when it succeeds (the audit trail records rejected requests too, by design)."""


def stored_rows(ctx: ServiceContext) -> int:
    with ctx.engine.connect() as connection:
        return int(connection.execute(text(STORED_ROWS[ctx.name])).scalar_one())


def assert_fhir_answer(status: int, content_type: str, body: bytes, what: str) -> dict[str, Any] | None:
    """No 5xx; every error an OperationOutcome in FHIR JSON; returns the parsed body (None when empty)."""
    assert status < 500, f"{what}: HTTP {status}: {body[:500]!r}"
    if not body:
        assert status in (200, 201, 204, 304), f"{what}: HTTP {status} without a body"
        return None
    assert content_type.startswith("application/fhir+json"), f"{what}: Content-Type {content_type!r}"
    parsed = json.loads(body)
    if status >= 400:
        assert parsed.get("resourceType") == "OperationOutcome", f"{what}: HTTP {status}: {parsed}"
        assert parsed.get("issue"), f"{what}: an OperationOutcome needs an issue"
    return parsed


def body_of(document: Any) -> bytes:
    """JSON bytes as a hostile client would send them (lone surrogates escaped, big numbers kept)."""
    return json.dumps(document).encode()


def no_surrogates(value: str) -> bool:
    return not any(0xD800 <= ord(ch) <= 0xDFFF for ch in value)


def assert_fhir_response(response: Any, what: str) -> dict[str, Any] | None:
    """`assert_fhir_answer` for an httpx response (the test client's)."""
    return assert_fhir_answer(response.status_code, response.headers.get("content-type", ""), response.content, what)
