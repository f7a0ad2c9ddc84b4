"""`cicatrix up` (what `make up` runs): the whole local stack as a newcomer gets it.

Starts the real processes on free ports with SQLite files in a temporary folder,
then checks what the README promises: both services answer R4 CapabilityStatements,
the EHR sandbox accepts a valid transaction, refuses an invalid CarePlan without
storing anything, does not duplicate a repeated conditional create, and everything
stops cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.servers import free_port

pytestmark = pytest.mark.xdist_group("stack")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    folder = tmp_path_factory.mktemp("stack")
    ports = {"catalog": free_port(), "careplan": free_port(), "sandbox": free_port()}
    env = {**os.environ,
           "CATALOG_PORT": str(ports["catalog"]), "CAREPLAN_PORT": str(ports["careplan"]),
           "EHR_SANDBOX_PORT": str(ports["sandbox"]),
           "CATALOG_DATABASE_URL": f"sqlite:///{folder}/catalog.db",
           "CAREPLAN_DATABASE_URL": f"sqlite:///{folder}/careplan.db"}
    log = (folder / "stack.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "services.cli", "up"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=log)
    assert process.stdout is not None
    banner = b""
    deadline = time.monotonic() + 120
    while b"Press Ctrl-C" not in banner:
        line = process.stdout.readline()
        if not line or time.monotonic() > deadline:
            process.kill()
            pytest.fail("cicatrix up did not start:\n" + (folder / "stack.log").read_text()[-3000:])
        banner += line
    urls = {name: f"http://127.0.0.1:{port}/fhir" for name, port in ports.items()}
    urls["banner"] = banner.decode()
    yield urls
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=30)
    finally:
        process.kill()
        log.close()
    assert code == 0, f"cicatrix up exited with {code} on SIGTERM"


def test_banner_prints_the_three_urls(stack):
    for name in ("catalog", "careplan", "sandbox"):
        assert stack[name] + "/metadata" in stack["banner"]


@pytest.mark.parametrize("service", ["catalog", "careplan"])
def test_services_answer_valid_r4_capability_statements(stack, service, r4_validator):
    response = httpx.get(stack[service] + "/metadata", timeout=10)
    assert response.status_code == 200
    r4_validator.assert_valid(response.json())


def _careplan(status: str = "active") -> dict:
    return {"resourceType": "CarePlan", "identifier": [{"system": "https://fhir.cicatrix.org/careplan-id",
                                                       "value": "e2e-1"}],
            "status": status, "intent": "plan", "subject": {"reference": "Patient/e2e"}}


def test_sandbox_accepts_a_valid_transaction(stack, r4_validator):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0b4cfa6e-0000-4000-8000-000000000001", "resource": _careplan(),
         "request": {"method": "POST", "url": "CarePlan",
                     "ifNoneExist": "identifier=https://fhir.cicatrix.org/careplan-id|e2e-1"}},
        {"fullUrl": "urn:uuid:0b4cfa6e-0000-4000-8000-000000000002",
         "resource": {"resourceType": "Provenance", "recorded": "2026-01-05T10:00:00+01:00",
                      "target": [{"reference": "urn:uuid:0b4cfa6e-0000-4000-8000-000000000001"}],
                      "agent": [{"who": {"display": "Cicatrix care-plan service"}}]},
         "request": {"method": "POST", "url": "Provenance"}}]}
    response = httpx.post(stack["sandbox"], json=bundle, headers={"content-type": "application/fhir+json"},
                          timeout=10)
    assert response.status_code == 200, response.text
    r4_validator.assert_valid(response.json())
    assert response.json()["type"] == "transaction-response"


def test_sandbox_rejects_an_invalid_careplan_and_stores_nothing(stack):
    before = httpx.get(stack["sandbox"] + "/CarePlan", params={"subject": "Patient/invalid"}, timeout=10).json()
    invalid = _careplan() | {"subject": {"reference": "Patient/invalid"}, "intentional": "typo"}
    response = httpx.post(stack["sandbox"] + "/CarePlan", json=invalid,
                          headers={"content-type": "application/fhir+json"}, timeout=10)
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"
    after = httpx.get(stack["sandbox"] + "/CarePlan", params={"subject": "Patient/invalid"}, timeout=10).json()
    assert after.get("total", 0) == before.get("total", 0) == 0


def test_sandbox_repeated_conditional_create_makes_one_resource(stack):
    plan = _careplan() | {"identifier": [{"system": "https://fhir.cicatrix.org/careplan-id", "value": "e2e-2"}]}
    headers = {"content-type": "application/fhir+json",
               "if-none-exist": "identifier=https://fhir.cicatrix.org/careplan-id|e2e-2"}
    first = httpx.post(stack["sandbox"] + "/CarePlan", json=plan, headers=headers, timeout=10)
    second = httpx.post(stack["sandbox"] + "/CarePlan", json=plan, headers=headers, timeout=10)
    assert (first.status_code, second.status_code) == (201, 200)
    found = httpx.get(stack["sandbox"] + "/CarePlan",
                      params={"identifier": "https://fhir.cicatrix.org/careplan-id|e2e-2"}, timeout=10).json()
    assert len(found.get("entry", [])) == 1


@pytest.mark.parametrize("path", ["/no/such/path", "/fhir/CarePlan/$nope"])
def test_errors_reach_clients_as_operation_outcomes(stack, path):
    base = stack["careplan"].removesuffix("/fhir")
    response = httpx.post(base + path, content=b"{not json", headers={"content-type": "application/fhir+json"},
                          timeout=10)
    assert 400 <= response.status_code < 500
    assert response.json()["resourceType"] == "OperationOutcome"


def test_a_two_megabyte_body_is_refused_with_413(stack):
    response = httpx.post(stack["catalog"] + "/ActivityDefinition", content=b" " * (2 * 1024 * 1024),
                          headers={"content-type": "application/fhir+json"}, timeout=10)
    assert response.status_code == 413
    assert response.json()["resourceType"] == "OperationOutcome"
