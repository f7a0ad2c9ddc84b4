"""Helpers for the EHR sandbox's own tests: an HTTP client on its FHIR base and R4 resources to send it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.sandbox import EhrSandbox

FHIR_JSON = "application/fhir+json"


class Fhir:
    """A thin FHIR JSON client: what a careplan dispatcher would send, without any of its logic."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        headers = {"Accept": FHIR_JSON}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=10.0)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def post(self, path: str, resource: Any, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        return self.http.post(
            path,
            content=json.dumps(resource),
            headers={"Content-Type": FHIR_JSON, **(headers or {})},
            **kwargs,
        )

    def put(self, path: str, resource: Any, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        return self.http.put(
            path,
            content=json.dumps(resource),
            headers={"Content-Type": FHIR_JSON, **(headers or {})},
            **kwargs,
        )

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def fhir(ehr_sandbox: EhrSandbox) -> Iterator[Fhir]:
    client = Fhir(ehr_sandbox.base_url)
    try:
        yield client
    finally:
        client.close()


def careplan(identifier: str = "assessment-qr1", **overrides: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "CarePlan",
        "identifier": [{"system": "https://example.org/fhir/careplan-id", "value": identifier}],
        "status": "active",
        "intent": "plan",
        "title": "Atrophic scar correction",
        "subject": {"reference": "Patient/p1"},
    }
    resource.update(overrides)
    return resource


def provenance(target: str, submission: str = "assessment-qr1") -> dict[str, Any]:
    return {
        "resourceType": "Provenance",
        "meta": {"tag": [{"system": "https://example.org/fhir/submission", "code": submission}]},
        "target": [{"reference": target}],
        "recorded": "2025-02-20T10:00:05+01:00",
        "agent": [{"who": {"reference": "Device/careplan-service"}}],
    }


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def delivery_transaction(identifier: str = "assessment-qr1", plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the careplan dispatcher sends: CarePlan + Provenance, both conditional, linked by urn:uuid."""
    plan_urn, provenance_urn = urn(), urn()
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": plan_urn,
                "resource": plan or careplan(identifier),
                "request": {
                    "method": "POST",
                    "url": "CarePlan",
                    "ifNoneExist": f"identifier=https://example.org/fhir/careplan-id|{identifier}",
                },
            },
            {
                "fullUrl": provenance_urn,
                "resource": provenance(plan_urn, identifier),
                "request": {
                    "method": "POST",
                    "url": "Provenance",
                    "ifNoneExist": f"_tag=https://example.org/fhir/submission|{identifier}",
                },
            },
        ],
    }


def issue_text(outcome: dict[str, Any]) -> str:
    """All diagnostics and details of an OperationOutcome, for assertions on why something failed."""
    assert outcome["resourceType"] == "OperationOutcome", outcome
    parts = []
    for issue in outcome["issue"]:
        parts += [issue.get("diagnostics", ""), issue.get("details", {}).get("text", "")]
        parts += issue.get("expression", [])
    return " ".join(parts)


def valid_statement(fhir: Fhir, assert_r4: Any) -> dict[str, Any]:
    """The CapabilityStatement the sandbox publishes now, after the independent R4 validator accepted it."""
    statement = fhir.get("/metadata").json()
    assert_r4(statement)
    return statement


def declared_resources(fhir: Fhir) -> dict[str, dict[str, Any]]:
    """CapabilityStatement.rest[0].resource by type, as the sandbox declares it now."""
    return {resource["type"]: resource for resource in fhir.get("/metadata").json()["rest"][0]["resource"]}


def codes(items: list[dict[str, Any]]) -> set[str]:
    """The `code` of each interaction (or `name` of each searchParam) of a CapabilityStatement list."""
    return {item.get("code", item.get("name")) for item in items}


def refusal_kinds(sandbox: EhrSandbox) -> list[str]:
    """The kind of each refusal in the request log, oldest first."""
    return [entry["refusal"]["kind"] for entry in sandbox.refusals()]


def assert_refused(sandbox: EhrSandbox, response: httpx.Response, status: int, kind: str) -> None:
    """The request was answered `status` with an OperationOutcome, logged as the only refusal, of `kind`, and
    stored nothing."""
    assert response.status_code == status, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    assert refusal_kinds(sandbox) == [kind]
    assert sandbox.store() == []
