"""Fetching missing prefetch from the EHR is bounded: a slow, refusing or oversized answer leaves that data
not checked (and the card says so) instead of stalling or failing the hook."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.cds.conftest import cds_settings
from tests.cds.support import Ehr, assessment, hook_body
from tests.support.apps import FHIR_JSON, careplan_app, running


def with_fhir_server(url: str, token: str = "ehr-issued-token-1") -> dict:
    return {"fhirServer": url, "fhirAuthorization": {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                                                     "scope": "patient/*.rs", "subject": "cicatrix"}}


def test_a_refused_token_leaves_the_data_not_checked(ehr, ehr_sandbox):
    ehr_sandbox.configure(token="the-right-token")
    body = hook_body("patient-view") | with_fhir_server(ehr_sandbox.base_url, token="a-wrong-token")
    [card] = ehr.cards("scar-plan", body)
    assert card["summary"].startswith("Not checked: scar assessment, active care plans")
    assert {r["status"] for r in ehr_sandbox.requests()} == {401}


@pytest.fixture
def impatient(catalog_url, ehr_issuer, shapes, tmp_path):
    settings = cds_settings(ehr_issuer, tmp_path, CDS_FHIR_TIMEOUT_SECONDS=0.3, CDS_FHIR_MAX_BYTES=2000)
    with running(careplan_app(f"sqlite:///{tmp_path}/careplan.db", CATALOG_URL=catalog_url, **settings)) as client:
        yield Ehr(client, ehr_issuer, shapes)


def test_a_slow_fhir_server_costs_at_most_the_timeout_once(impatient, ehr_sandbox):
    ehr_sandbox.configure(latency_ms=3000)
    started = time.monotonic()
    [card] = impatient.cards("scar-plan", hook_body("patient-view") | with_fhir_server(ehr_sandbox.base_url))
    assert time.monotonic() - started < 2.0  # the five queries run at once, each cut off after 0.3 s
    assert card["summary"].startswith("Not checked: ")


def test_an_answer_larger_than_the_limit_is_not_read(impatient, ehr_sandbox):
    for n in range(3):  # three assessments: a searchset well over 2,000 bytes
        resource = {k: v for k, v in assessment().items() if k != "id"} | {"identifier": {"value": f"a-{n}"}}
        assert httpx.post(f"{ehr_sandbox.base_url}/QuestionnaireResponse", json=resource,
                          headers=FHIR_JSON).status_code == 201
    [card] = impatient.cards("scar-plan", hook_body("patient-view", {"carePlans": None})
                             | with_fhir_server(ehr_sandbox.base_url))
    assert card["summary"] == "Not checked: scar assessment"


def test_cors_answers_allowed_browser_origins_on_cds_routes_only(catalog_url, ehr_issuer, tmp_path):
    settings = cds_settings(ehr_issuer, tmp_path, CDS_CORS_ORIGINS="https://ehr.hospital.test")
    with running(careplan_app(f"sqlite:///{tmp_path}/careplan.db", CATALOG_URL=catalog_url, **settings)) as client:
        preflight = {"Origin": "https://ehr.hospital.test", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization,content-type"}
        allowed = client.options("/cds-services/scar-plan", headers=preflight)
        other = client.options("/cds-services/scar-plan", headers=preflight | {"Origin": "https://evil.example"})
        api = client.get("/fhir/metadata", headers={"Origin": "https://ehr.hospital.test"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://ehr.hospital.test"
    assert "access-control-allow-origin" not in other.headers
    assert "access-control-allow-origin" not in api.headers
