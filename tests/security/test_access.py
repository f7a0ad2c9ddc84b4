"""Inbound access control on both services (AUTH_MODE=jwt): 401 versus 403, SMART scopes, patient compartments."""

from __future__ import annotations

from typing import Any

import pytest

from tests.careplan.conftest import example
from tests.support.apps import FHIR_JSON, catalog_app, running

CATALOG_READER = "system/ActivityDefinition.rs system/Medication.rs"


def outcome_of(response, r4_validator, code: str) -> dict[str, Any]:
    body = response.json()
    r4_validator.assert_valid(body)
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == code, body
    return body


def generate(client, headers: dict[str, str], name: str = "atrophic-chest-visible-vessels"):
    return client.post("/fhir/CarePlan/$generate", json=example(name), headers=FHIR_JSON | headers)


# ------------------------------------------------------------------------------------------------ 401 / 403


def test_no_token_is_401_with_a_bearer_challenge(gate, r4_validator):
    response = gate.get("/fhir/ActivityDefinition")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="catalog"'
    outcome_of(response, r4_validator, "login")


@pytest.mark.parametrize("authorization", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "bearer not-a-jwt"])
def test_a_malformed_or_bad_token_is_401_and_says_invalid(gate, r4_validator, authorization):
    response = gate.get("/fhir/ActivityDefinition", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer realm="catalog", error="invalid_')
    outcome_of(response, r4_validator, "login")


def test_an_expired_token_is_401(gate, issuer, r4_validator):
    response = gate.get("/fhir/ActivityDefinition", headers=issuer.bearer(CATALOG_READER, exp=1000))
    assert response.status_code == 401 and 'error="invalid_token"' in response.headers["www-authenticate"]
    assert "expired" in outcome_of(response, r4_validator, "login")["issue"][0]["diagnostics"]


def test_a_token_without_a_subject_or_client_is_401(gate, issuer):
    response = gate.get("/fhir/ActivityDefinition",
                                   headers=issuer.bearer(CATALOG_READER, sub=None, client_id=None))
    assert response.status_code == 401


def test_a_valid_token_without_the_scope_is_403(gate, issuer, r4_validator):
    response = gate.get("/fhir/ActivityDefinition", headers=issuer.bearer("system/Medication.rs"))
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert "system/ActivityDefinition.s" in outcome_of(response, r4_validator, "forbidden")["issue"][0]["diagnostics"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/fhir/metadata", "/openapi.json"])
def test_probes_metrics_and_capabilities_stay_open(gate, path):
    assert gate.get(path).status_code == 200


def test_the_capability_statement_declares_smart_on_fhir(gate, r4_validator):
    statement = gate.get("/fhir/metadata").json()
    r4_validator.assert_valid(statement)
    assert statement["rest"][0]["security"]["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"


# ------------------------------------------------------------------------------------------------ catalog


def test_catalog_reads_need_rs_and_writes_need_cud(secured_catalog, issuer):
    reader, writer = issuer.bearer(CATALOG_READER), issuer.bearer("user/ActivityDefinition.cud")
    found = secured_catalog.get("/fhir/ActivityDefinition", params={"_count": 1}, headers=reader).json()
    resource = found["entry"][0]["resource"]
    assert secured_catalog.get(f"/fhir/ActivityDefinition/{resource['id']}", headers=reader).status_code == 200
    assert secured_catalog.get(f"/fhir/ActivityDefinition/{resource['id']}/_history",
                               headers=reader).status_code == 200
    new = {"resourceType": "ActivityDefinition", "status": "draft", "name": "ScopeTest", "url": "https://t.test/ad"}
    assert secured_catalog.post("/fhir/ActivityDefinition", json=new, headers=FHIR_JSON | reader).status_code == 403
    created = secured_catalog.post("/fhir/ActivityDefinition", json=new, headers=FHIR_JSON | writer)
    assert created.status_code == 201
    assert secured_catalog.get("/fhir/ActivityDefinition", headers=writer).status_code == 403
    assert secured_catalog.delete(f"/fhir/ActivityDefinition/{created.json()['id']}",
                                  headers=writer).status_code == 200


def test_v1_scopes_and_wildcards_are_understood(secured_catalog, issuer):
    assert secured_catalog.get("/fhir/Medication", headers=issuer.bearer("user/*.read")).status_code == 200
    assert secured_catalog.get("/fhir/Medication", headers=issuer.bearer("system/Medication.read")).status_code == 200
    assert secured_catalog.get("/fhir/Medication", headers=issuer.bearer("system/Medication.write")).status_code == 403


def test_terminology_operations_read_and_validate_writes(secured_catalog, issuer):
    value_set = secured_catalog.get("/fhir/ValueSet", params={"_count": 1},
                                    headers=issuer.bearer("system/ValueSet.rs")).json()["entry"][0]["resource"]
    expand = f"/fhir/ValueSet/{value_set['id']}/$expand"
    assert secured_catalog.get(expand, headers=issuer.bearer("system/ValueSet.r")).status_code == 200
    assert secured_catalog.get(expand, headers=issuer.bearer("system/CodeSystem.r")).status_code == 403
    body = {"resourceType": "Medication", "status": "active"}
    validate = "/fhir/Medication/$validate"
    assert secured_catalog.post(validate, json=body, headers=FHIR_JSON | issuer.bearer(CATALOG_READER)).status_code \
        == 403
    assert secured_catalog.post(validate, json=body,
                                headers=FHIR_JSON | issuer.bearer("system/Medication.c")).status_code == 200


def test_a_batch_needs_what_each_entry_needs(secured_catalog, issuer, r4_validator):
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Medication", "status": "active"},
         "request": {"method": "POST", "url": "Medication"}},
        {"request": {"method": "GET", "url": "ActivityDefinition?_count=1"}},
    ]}
    partial = secured_catalog.post("/fhir", json=bundle, headers=FHIR_JSON | issuer.bearer("system/Medication.c"))
    assert partial.status_code == 403
    assert "ActivityDefinition" in outcome_of(partial, r4_validator, "forbidden")["issue"][0]["diagnostics"]
    full = secured_catalog.post("/fhir", json=bundle,
                                headers=FHIR_JSON | issuer.bearer("system/Medication.c system/ActivityDefinition.s"))
    assert full.status_code == 200, full.text
    assert secured_catalog.post("/fhir", json=bundle, headers=FHIR_JSON).status_code == 401
    no_request = {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": {"resourceType": "Medication"}}]}
    assert secured_catalog.post("/fhir", json=no_request,
                                headers=FHIR_JSON | issuer.bearer("system/*.cruds")).status_code == 400


def test_anonymous_reads_when_configured_but_never_writes_or_bad_tokens(database_url, issuer, jwks_file):
    app = catalog_app(database_url, LOG_LEVEL="WARNING", ALLOW_ANONYMOUS_READ=True, **issuer.settings(jwks_file))
    with running(app) as client:
        assert client.get("/fhir/ActivityDefinition", params={"_count": 1}).status_code == 200
        assert client.get("/fhir/ValueSet/$expand", params={"url": "https://x.test/vs"}).status_code != 401
        new = {"resourceType": "Medication", "status": "active"}
        assert client.post("/fhir/Medication", json=new, headers=FHIR_JSON).status_code == 401
        assert client.post("/fhir/Medication/$validate", json=new, headers=FHIR_JSON).status_code == 401
        bad = {"Authorization": "Bearer not.a.token"}
        assert client.get("/fhir/ActivityDefinition", headers=bad).status_code == 401


# ------------------------------------------------------------------------------------------------ careplan


def test_generate_needs_careplan_c(secured_careplan, issuer, r4_validator):
    assert generate(secured_careplan, {}).status_code == 401
    refused = generate(secured_careplan, issuer.bearer("system/CarePlan.rs"))
    assert refused.status_code == 403
    assert "system/CarePlan.c" in outcome_of(refused, r4_validator, "forbidden")["issue"][0]["diagnostics"]
    created = generate(secured_careplan, issuer.bearer("system/CarePlan.c"))
    assert created.status_code == 201, created.text
    plan = created.json()
    assert secured_careplan.get(f"/fhir/CarePlan/{plan['id']}",
                                headers=issuer.bearer("system/CarePlan.c")).status_code == 403
    assert secured_careplan.get(f"/fhir/CarePlan/{plan['id']}",
                                headers=issuer.bearer("system/CarePlan.rs")).status_code == 200
    assert secured_careplan.get("/fhir/CarePlan", params={"subject": "Patient/example-1"},
                                headers=issuer.bearer("system/CarePlan.r")).status_code == 403


def test_apply_needs_careplan_r(secured_careplan, issuer):
    parameters = example("atrophic-chest-visible-vessels")
    apply_body = {"resourceType": "Parameters", "parameter": [
        p if p["name"] != "assessment" else {"name": "data", "resource": {
            "resourceType": "Bundle", "type": "collection", "entry": [{"resource": p["resource"]}]}}
        for p in parameters["parameter"]]}
    url = "/fhir/PlanDefinition/$apply"
    assert secured_careplan.post(url, json=apply_body, headers=FHIR_JSON).status_code == 401
    assert secured_careplan.post(url, json=apply_body,
                                 headers=FHIR_JSON | issuer.bearer("system/PlanDefinition.r")).status_code == 403
    applied = secured_careplan.post(url, json=apply_body, headers=FHIR_JSON | issuer.bearer("user/CarePlan.r"))
    assert applied.status_code == 200 and applied.json()["resourceType"] == "CarePlan"


def test_a_patient_scope_only_reaches_that_patients_plans(secured_careplan, issuer, r4_validator):
    system = issuer.bearer("system/CarePlan.c")
    own = generate(secured_careplan, system, "atrophic-chest-visible-vessels").json()  # Patient/example-1
    other = generate(secured_careplan, system, "hypotrophic-abdomen").json()
    assert other["subject"]["reference"] != "Patient/example-1"
    patient = issuer.bearer("patient/CarePlan.rs patient/QuestionnaireResponse.rs", patient="example-1")

    everything = secured_careplan.get("/fhir/CarePlan", headers=patient).json()
    r4_validator.assert_valid(everything)
    assert [e["resource"]["id"] for e in everything["entry"]] == [own["id"]]
    asked_for_other = secured_careplan.get("/fhir/CarePlan", params={"subject": other["subject"]["reference"]},
                                           headers=patient).json()
    assert "entry" not in asked_for_other
    posted = secured_careplan.post("/fhir/CarePlan/_search", data={"status": "draft"},
                                   headers=patient | {"content-type": "application/x-www-form-urlencoded"}).json()
    assert [e["resource"]["id"] for e in posted["entry"]] == [own["id"]]
    assessments = secured_careplan.get("/fhir/QuestionnaireResponse", headers=patient).json()
    assert {e["resource"]["subject"]["reference"] for e in assessments["entry"]} == {"Patient/example-1"}

    assert secured_careplan.get(f"/fhir/CarePlan/{own['id']}", headers=patient).status_code == 200
    for path in (f"/fhir/CarePlan/{other['id']}", f"/fhir/CarePlan/{other['id']}/_history",
                 f"/fhir/CarePlan/{other['id']}/_history/1"):
        response = secured_careplan.get(path, headers=patient)
        assert response.status_code == 403, path
        outcome_of(response, r4_validator, "forbidden")
    assert secured_careplan.get("/fhir/CarePlan", params={"_id": other["id"]}, headers=patient).json().get(
        "entry") is None


def test_a_patient_scope_cannot_generate_write_or_act_for_anyone(secured_careplan, issuer):
    token = issuer.bearer("patient/CarePlan.cruds", patient="example-1")
    assert generate(secured_careplan, token).status_code == 403
    plan = generate(secured_careplan, issuer.bearer("system/CarePlan.c")).json()
    update = secured_careplan.put(f"/fhir/CarePlan/{plan['id']}", json=plan,
                                  headers=FHIR_JSON | token | {"If-Match": 'W/"1"'})
    assert update.status_code == 403


def test_a_patient_scope_without_patient_context_reaches_nothing(secured_careplan, issuer):
    assert secured_careplan.get("/fhir/CarePlan", headers=issuer.bearer("patient/CarePlan.rs")).status_code == 403


def test_tasks_need_task_scopes_and_stay_in_the_patient_compartment(secured_careplan, issuer):
    plan = generate(secured_careplan, issuer.bearer("system/CarePlan.c")).json()
    other = generate(secured_careplan, issuer.bearer("system/CarePlan.c"), "hypotrophic-abdomen").json()
    query = {"focus": f"CarePlan/{plan['id']}"}
    assert secured_careplan.get("/fhir/Task", params=query, headers=issuer.bearer("system/CarePlan.rs")
                                ).status_code == 403
    tasks = secured_careplan.get("/fhir/Task", params=query, headers=issuer.bearer("system/Task.rs")).json()
    task_id = tasks["entry"][0]["resource"]["id"]
    other_task = secured_careplan.get("/fhir/Task", params={"focus": f"CarePlan/{other['id']}"},
                                      headers=issuer.bearer("system/Task.rs")).json()["entry"][0]["resource"]["id"]
    patient = issuer.bearer("patient/Task.rs", patient="example-1")
    assert secured_careplan.get(f"/fhir/Task/{task_id}", headers=patient).status_code == 200
    assert secured_careplan.get(f"/fhir/Task/{other_task}", headers=patient).status_code == 403
    assert secured_careplan.get("/fhir/Task", params=query, headers=patient).status_code == 403  # cannot narrow
    assert secured_careplan.post(f"/fhir/Task/{task_id}/$retry", headers=issuer.bearer("system/Task.rs")
                                 ).status_code == 403
    assert secured_careplan.post(f"/fhir/Task/{task_id}/$retry", headers=issuer.bearer("system/Task.u")
                                 ).status_code == 409  # allowed; refused because it has not failed


def test_the_audit_trail_needs_its_own_scope(secured_careplan, issuer):
    assert secured_careplan.get("/fhir/AuditEvent", headers=issuer.bearer("system/CarePlan.rs")).status_code == 403
    assert secured_careplan.get("/fhir/AuditEvent", headers=issuer.bearer("system/AuditEvent.rs")).status_code == 200


def test_an_unknown_route_under_the_fhir_base_is_refused_after_authentication(secured_careplan, issuer):
    token = issuer.bearer("system/*.cruds")
    assert secured_careplan.get("/fhir/CarePlan/x/y/z").status_code == 401
    assert secured_careplan.get("/fhir/CarePlan/x/y/z", headers=token).status_code == 403
    assert secured_careplan.post("/fhir/CarePlan/$unheard-of", headers=token).status_code == 403


def test_keys_can_come_from_a_jwks_url(database_url, issuer, r4_validator):
    """The key set is fetched over HTTP from AUTH_JWKS_URL; an unreachable one makes tokens uncheckable (503)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tests.support.servers import free_port, serve

    served = Starlette(routes=[Route("/jwks", lambda _: JSONResponse(issuer.jwks))])
    settings = {"AUTH_MODE": "jwt", "AUTH_ISSUER": issuer.issuer, "AUTH_AUDIENCE": issuer.audience}
    with serve(served) as idp:
        app = catalog_app(database_url, content_dir=None, LOG_LEVEL="WARNING", AUTH_JWKS_URL=f"{idp}/jwks",
                          **settings)
        with running(app) as client:
            assert client.get("/fhir/Medication", headers=issuer.bearer("system/Medication.s")).status_code == 200
            assert client.get("/fhir/Medication", headers=issuer.bearer("system/Medication.s", alg="ES384")
                              ).status_code == 200
    unreachable = catalog_app(database_url, content_dir=None, LOG_LEVEL="WARNING",
                              AUTH_JWKS_URL=f"http://127.0.0.1:{free_port()}/jwks", **settings)
    with running(unreachable) as client:
        response = client.get("/fhir/Medication", headers=issuer.bearer("system/Medication.s"))
        assert response.status_code == 503
        r4_validator.assert_valid(response.json())
