"""GET /fhir/metadata: a valid R4 CapabilityStatement that says what the sandbox really does."""

from __future__ import annotations

import pytest

from tests.sandbox.conftest import valid_statement

pytestmark = pytest.mark.sandbox


def test_metadata_is_an_r4_capability_statement(fhir):
    response = fhir.get("/metadata")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    statement = response.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    assert statement["kind"] == "instance"
    assert statement["status"] == "active"
    assert "application/fhir+json" in statement["format"]
    assert statement["implementation"]["url"] == fhir.http.base_url.__str__().rstrip("/")


def test_metadata_advertises_transactions_batches_and_conditional_create(fhir):
    rest = fhir.get("/metadata").json()["rest"][0]

    assert rest["mode"] == "server"
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch"}
    careplan = next(r for r in rest["resource"] if r["type"] == "CarePlan")
    assert {i["code"] for i in careplan["interaction"]} >= {
        "create",
        "read",
        "vread",
        "update",
        "search-type",
    }
    assert careplan["conditionalCreate"] is True
    assert careplan["versioning"] == "versioned-update"


def test_metadata_lists_only_search_parameters_the_server_evaluates(fhir):
    resources = {r["type"]: r for r in fhir.get("/metadata").json()["rest"][0]["resource"]}

    careplan_params = {p["name"]: p["type"] for p in resources["CarePlan"]["searchParam"]}
    assert careplan_params["identifier"] == "token"
    assert careplan_params["subject"] == "reference"
    assert careplan_params["_tag"] == "token"
    assert "_compartment" not in careplan_params  # a Medplum extension, not R4
    all_types = {p["type"] for r in resources.values() for p in r.get("searchParam", [])}
    assert all_types <= {"token", "reference", "string", "uri", "date"}


def test_metadata_is_readable_without_a_token_when_auth_is_on(ehr_sandbox, fhir):
    ehr_sandbox.configure(token="s3cret")

    response = fhir.get("/metadata")

    assert response.status_code == 200
    assert "Bearer" in response.json()["rest"][0]["security"]["description"]


@pytest.mark.parametrize(
    "profile", ["hapi", "oracle-millennium", "us-core-notes", "minimal", "no-transaction", "no-careplan-write"]
)
def test_every_profile_publishes_a_valid_r4_capability_statement_naming_it(ehr_sandbox, fhir, assert_r4, profile):
    ehr_sandbox.configure(profile=profile)

    statement = valid_statement(fhir, assert_r4)

    assert f'"{profile}"' in statement["implementation"]["description"]
