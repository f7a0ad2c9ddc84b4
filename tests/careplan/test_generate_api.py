"""`CarePlan/$generate` and the stored plans, over HTTP with a real catalog, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from tests.careplan.conftest import answer, assessment_of, example
from tests.support.apps import FHIR_JSON


def generate(client, parameters: dict[str, Any]):
    return client.post("/fhir/CarePlan/$generate", json=parameters, headers=FHIR_JSON)


def with_param(parameters: dict[str, Any], name: str, **value: Any) -> dict[str, Any]:
    parameters["parameter"] = [p for p in parameters["parameter"] if p["name"] != name] + [{"name": name, **value}]
    return parameters


def test_generate_creates_a_valid_plan_with_location_and_etag(careplan, r4_validator):
    response = generate(careplan, example("atrophic-chest-visible-vessels"))
    assert response.status_code == 201, response.text
    plan = response.json()
    r4_validator.assert_valid(plan)
    assert response.headers["location"].endswith(f"/fhir/CarePlan/{plan['id']}/_history/1")
    assert response.headers["etag"] == 'W/"1"'
    assert plan["status"] == "draft" and plan["intent"] == "plan"
    assert plan["subject"] == {"reference": "Patient/example-1"}
    read = careplan.get(f"/fhir/CarePlan/{plan['id']}")
    assert read.status_code == 200 and read.json() == plan
    stored_assessment = careplan.get(f"/fhir/{plan['supportingInfo'][0]['reference']}")
    assert stored_assessment.status_code == 200
    r4_validator.assert_valid(stored_assessment.json())


def test_the_same_assessment_again_returns_the_same_plan(careplan):
    first = generate(careplan, example("atrophic-pregnant"))
    second = generate(careplan, example("atrophic-pregnant"))
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    found = careplan.get("/fhir/CarePlan", params={"subject": "Patient/example-3"}).json()
    assert len(found["entry"]) == 1


def test_plans_are_searchable(careplan, r4_validator):
    plan = generate(careplan, example("atrophic-chest-visible-vessels")).json()
    generate(careplan, example("hypotrophic-abdomen"))
    identifier = plan["identifier"][0]
    for params in ({"subject": "Patient/example-1"}, {"patient": "example-1"}, {"status": "draft"},
                   {"identifier": f"{identifier['system']}|{identifier['value']}"},
                   {"date": "ge2026-03-02", "subject": "Patient/example-1"}, {"_lastUpdated": "gt2020-01-01"}):
        bundle = careplan.get("/fhir/CarePlan", params=params).json()
        r4_validator.assert_valid(bundle)
        assert plan["id"] in {e["resource"]["id"] for e in bundle["entry"]}, params
    assert careplan.get("/fhir/CarePlan", params={"subject": "Patient/nobody"}).json().get("entry") is None
    assert len(careplan.get("/fhir/CarePlan", params={"status": "draft"}).json()["entry"]) == 2


def test_reassessment_replaces_and_revokes_the_active_plan(careplan, r4_validator):
    first = generate(careplan, with_param(example("atrophic-chest-visible-vessels"), "status", valueCode="active"))
    assert first.status_code == 201
    again = example("atrophic-chest-visible-vessels")
    assessment = assessment_of(again)
    assessment["id"] = "reassessment-1"
    assessment["identifier"]["value"] = "reassessment-1"
    answer(again, "scar-age-months")["answer"] = [{"valueInteger": 14}]
    second = generate(careplan, with_param(again, "status", valueCode="active"))
    assert second.status_code == 201, second.text
    new = second.json()
    assert new["replaces"] == [{"reference": f"CarePlan/{first.json()['id']}"}]
    old = careplan.get(f"/fhir/CarePlan/{first.json()['id']}")
    assert old.json()["status"] == "revoked" and old.headers["etag"] == 'W/"2"'
    r4_validator.assert_valid(old.json())
    history = careplan.get(f"/fhir/CarePlan/{first.json()['id']}/_history").json()
    assert [e["resource"]["status"] for e in history["entry"]] == ["revoked", "active"]
    assert careplan.get(f"/fhir/CarePlan/{first.json()['id']}/_history/1").json()["status"] == "active"


def test_intake_reports_every_problem_at_once(careplan, r4_validator):
    parameters = example("atrophic-chest-visible-vessels")
    assessment = assessment_of(parameters)
    assessment["subject"] = {"reference": "Patient/someone-else"}
    items = assessment["item"]
    items[:] = [i for i in items if i["linkId"] != "pregnant"]
    answer(parameters, "scar-age-months")["answer"] = [{"valueString": "two years"}]
    answer(parameters, "body-site")["answer"] = [{"valueCoding": {"system": "https://fhir.cicatrix.org/CodeSystem/"
                                                                  "body-site", "code": "elbow"}}]
    items.append({"linkId": "favourite-colour", "answer": [{"valueString": "blue"}]})
    response = generate(careplan, parameters)
    assert response.status_code == 422
    outcome = response.json()
    r4_validator.assert_valid(outcome)
    expressions = {e for issue in outcome["issue"] for e in issue.get("expression", [])}
    assert "QuestionnaireResponse.subject" in expressions
    assert {"QuestionnaireResponse.item[1].answer[0]", "QuestionnaireResponse.item[2].answer[0]"} <= expressions
    assert any("pregnant" in issue["diagnostics"] for issue in outcome["issue"])
    assert any("favourite-colour" in issue["diagnostics"] for issue in outcome["issue"])
    assert len(outcome["issue"]) >= 5
    assert careplan.get("/fhir/CarePlan").json().get("entry") is None, "nothing stored from a rejected request"


@pytest.mark.parametrize("body", [
    {"resourceType": "Patient"},
    {"resourceType": "Parameters", "parameter": [{"name": "subject", "valueString": "Patient/1"}]},
    {"resourceType": "Parameters", "parameter": [{"name": "subject", "valueString": "not a reference"}]},
    {"resourceType": "Parameters", "parameter": [{"name": "colour", "valueString": "blue"}]},
    {"resourceType": "Parameters", "parameter": [{"name": "subject", "valueBoolean": "yes"}]},
])
def test_malformed_parameters_are_400(careplan, body, r4_validator):
    response = generate(careplan, body)
    assert response.status_code == 400, response.text
    r4_validator.assert_valid(response.json())


def test_malformed_json_is_400(careplan):
    response = careplan.post("/fhir/CarePlan/$generate", content=b'{"resourceType": "Param', headers=FHIR_JSON)
    assert response.status_code == 400


def test_unsupported_scar_type_is_422_saying_so(careplan, r4_validator):
    response = generate(careplan, example("keloid-unsupported"))
    assert response.status_code == 422
    r4_validator.assert_valid(response.json())
    assert "no treatment protocol" in response.json()["issue"][0]["diagnostics"]


def test_apply_returns_the_plan_and_stores_nothing(careplan, r4_validator):
    parameters = example("atrophic-shin-old-no-vessels")
    apply_body = {"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueString": "Patient/example-2"},
        {"name": "data", "resource": {"resourceType": "Bundle", "type": "collection",
                                      "entry": [{"resource": assessment_of(parameters)}]}},
        {"name": "start", "valueDate": "2026-03-02"}]}
    response = careplan.post("/fhir/PlanDefinition/$apply", json=apply_body, headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    plan = response.json()
    r4_validator.assert_valid(plan)
    assert plan["period"] == {"start": "2026-03-02", "end": "2027-09-02"}
    instance = careplan.post("/fhir/PlanDefinition/atrophic-scar-protocol/$apply", json=apply_body,
                             headers=FHIR_JSON)
    assert instance.status_code == 200
    assert instance.json()["activity"] == plan["activity"]
    assert careplan.post("/fhir/PlanDefinition/no-such-protocol/$apply", json=apply_body,
                         headers=FHIR_JSON).status_code == 404
    assert careplan.get("/fhir/CarePlan").json().get("entry") is None


def test_capability_statement_lists_the_operations(careplan, r4_validator):
    statement = careplan.get("/fhir/metadata").json()
    r4_validator.assert_valid(statement)
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert [o["name"] for o in resources["CarePlan"]["operation"]] == ["generate", "validate"]
    assert [o["name"] for o in resources["PlanDefinition"]["operation"]] == ["apply"]


def test_concurrent_submissions_of_one_assessment_make_one_plan(database_url, catalog_url):
    """Eight clients send the same assessment at once: one plan is created (201), the others are answered with
    it (200), and one plan, one stored assessment and one delivery exist; none gets a 409 or a 500."""
    import threading

    import httpx
    from sqlalchemy import text

    from services.fhir.db import make_engine
    from tests.support.apps import careplan_app
    from tests.support.servers import serve

    app = careplan_app(database_url, CATALOG_URL=catalog_url, LOG_LEVEL="WARNING", DISPATCHER="off")
    parameters = example("hypotrophic-abdomen")
    start = threading.Barrier(8)
    answers: list[httpx.Response] = []
    with serve(app) as base:
        httpx.get(f"{base}/fhir/metadata").raise_for_status()

        def submit() -> None:
            with httpx.Client(base_url=base, timeout=60) as client:
                start.wait()
                answers.append(client.post("/fhir/CarePlan/$generate", json=parameters, headers=FHIR_JSON))

        threads = [threading.Thread(target=submit) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(a.status_code for a in answers) == [200] * 7 + [201], [a.text[:300] for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    engine = make_engine(database_url)
    with engine.connect() as connection:
        counts = connection.execute(text(
            "SELECT (SELECT count(*) FROM careplan_resource WHERE resource_type = 'CarePlan'), "
            "(SELECT count(*) FROM careplan_resource WHERE resource_type = 'QuestionnaireResponse'), "
            "(SELECT count(*) FROM careplan_delivery)")).one()
    engine.dispose()
    assert tuple(counts) == (1, 1, 1)
