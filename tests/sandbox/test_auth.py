"""Bearer-token authentication of FHIR requests (EHR_SANDBOX_TOKEN or /_control/config)."""

from __future__ import annotations

import httpx
import pytest

from tests.sandbox.conftest import Fhir, careplan
from tests.support.sandbox import EhrSandbox, start_sandbox, stop_sandbox

pytestmark = pytest.mark.sandbox


def test_without_a_token_requests_are_401_with_a_bearer_challenge(ehr_sandbox, fhir):
    ehr_sandbox.configure(token="s3cret")

    response = fhir.post("/CarePlan", careplan())

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["issue"][0]["code"] == "login"
    assert ehr_sandbox.store() == []


def test_a_wrong_token_is_401_invalid_token(ehr_sandbox):
    ehr_sandbox.configure(token="s3cret")

    response = Fhir(ehr_sandbox.base_url, token="guess").get("/CarePlan")

    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert response.json()["resourceType"] == "OperationOutcome"


def test_the_right_token_is_accepted(ehr_sandbox):
    ehr_sandbox.configure(token="s3cret")
    client = Fhir(ehr_sandbox.base_url, token="s3cret")

    assert client.post("/CarePlan", careplan()).status_code == 201
    assert client.get("/CarePlan").json()["total"] == 1


def test_clearing_the_token_opens_the_server_again(ehr_sandbox, fhir):
    ehr_sandbox.configure(token="s3cret")
    ehr_sandbox.configure(token=None)

    assert fhir.get("/CarePlan").status_code == 200


def test_the_control_api_never_needs_the_token(ehr_sandbox):
    ehr_sandbox.configure(token="s3cret")

    assert httpx.get(f"{ehr_sandbox.control_url}/store").status_code == 200


def test_a_token_from_the_environment_is_required_from_the_start_and_kept_by_reset():
    proc = start_sandbox(env={"EHR_SANDBOX_TOKEN": "from-env"})
    sandbox = EhrSandbox(proc)
    try:
        sandbox.reset()
        assert Fhir(proc.base_url).get("/CarePlan").status_code == 401
        assert Fhir(proc.base_url, token="from-env").get("/CarePlan").status_code == 200
        assert sandbox.configure()["token"] == "from-env"
    finally:
        sandbox.close()
        stop_sandbox(proc)
