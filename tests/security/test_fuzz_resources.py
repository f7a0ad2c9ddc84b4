"""Property-based fuzzing with hostile FHIR resources, Parameters and queries (strategies.py).

For every generated request: no 5xx, every error an OperationOutcome, and nothing stored from a rejected
request. Bounded here; `make fuzz` runs the same properties with CICATRIX_FUZZ_EXAMPLES=2000.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from tests.careplan.conftest import example
from tests.security.fuzzing import assert_fhir_response, body_of, no_surrogates, stored_rows
from tests.security.strategies import (
    fuzz_settings,
    hostile_json,
    hostile_resource,
    hostile_text,
    mutated,
    search_query,
)
from tests.support.apps import FHIR_JSON, careplan_app, catalog_app, running

pytestmark = [
    pytest.mark.fuzz,
    # psycopg_pool spreads each new connection's lifetime with the global `random`. The app under test opens
    # its event-loop connections on its own thread, so one opened while Hypothesis draws the next example
    # changes the global state mid-draw, which Hypothesis takes for a strategy using `random`.
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"),
]

EXAMPLE_NAMES = ["atrophic-chest-visible-vessels", "atrophic-allergy-camphor", "striae-thigh", "atrophic-pregnant",
                 "hypotrophic-abdomen"]
CATALOG_TYPES = ["ActivityDefinition", "Medication", "PlanDefinition", "ValueSet", "Questionnaire"]
ACTIVITY = {"resourceType": "ActivityDefinition", "url": "https://fuzz.test/ActivityDefinition/x", "version": "1",
            "name": "FuzzActivity", "status": "draft", "kind": "ServiceRequest",
            "code": {"coding": [{"system": "https://fhir.cicatrix.org/CodeSystem/modality", "code": "x"}]},
            "timingTiming": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "wk"}}}


@pytest.fixture
def careplan(database_url: str, catalog_url: str) -> Iterator[TestClient]:
    with running(careplan_app(database_url, CATALOG_URL=catalog_url, LOG_LEVEL="CRITICAL",
                              DISPATCHER="off")) as client:
        yield client


@pytest.fixture
def catalog(database_url: str) -> Iterator[TestClient]:
    with running(catalog_app(database_url, content_dir=None, LOG_LEVEL="CRITICAL")) as client:
        yield client


def send(client: TestClient, method: str, url: str, document: object, **headers: str):
    """Send `document` and check the answer; returns (status, parsed body, rows stored before, after)."""
    ctx = client.app.state.ctx
    before = stored_rows(ctx)
    response = client.request(method, url, content=body_of(document), headers=FHIR_JSON | headers)
    parsed = assert_fhir_response(response, f"{method} {url}")
    after = stored_rows(ctx)
    if response.status_code >= 400:
        assert after == before, f"{method} {url} was refused ({response.status_code}) but stored {after - before} rows"
    return response.status_code, parsed


def test_generate_survives_mutated_assessments(careplan, r4_validator):
    @fuzz_settings(40)
    @given(st.sampled_from(EXAMPLE_NAMES).flatmap(lambda name: mutated(example(name))))
    def run(parameters: dict) -> None:
        status, body = send(careplan, "POST", "/fhir/CarePlan/$generate", parameters)
        if status in (200, 201):
            r4_validator.assert_valid(body)

    run()


def test_generate_and_apply_survive_junk(careplan):
    @fuzz_settings(25)
    @given(st.one_of(hostile_json, st.fixed_dictionaries({"resourceType": st.just("Parameters"),
                                                          "parameter": st.lists(hostile_json, max_size=4)})),
           st.sampled_from(["/fhir/CarePlan/$generate", "/fhir/PlanDefinition/$apply",
                            "/fhir/PlanDefinition/atrophic-scar-protocol/$apply", "/fhir/CarePlan/$validate"]))
    def run(document: object, url: str) -> None:
        send(careplan, "POST", url, document)

    run()


def test_catalog_writes_survive_hostile_resources(catalog):
    @fuzz_settings(40)
    @given(st.sampled_from(CATALOG_TYPES).flatmap(
        lambda t: st.tuples(st.just(t), hostile_resource(t, {**ACTIVITY, "resourceType": t}))),
        st.sampled_from(["POST", "PUT", "VALIDATE"]))
    def run(typed: tuple[str, dict], method: str) -> None:
        resource_type, resource = typed
        if method == "POST":
            send(catalog, "POST", f"/fhir/{resource_type}", resource)
        elif method == "VALIDATE":
            send(catalog, "POST", f"/fhir/{resource_type}/$validate", resource)
        else:
            resource_id = resource.get("id") if isinstance(resource.get("id"), str) else "fuzz-id"
            send(catalog, "PUT", f"/fhir/{resource_type}/{resource_id}", resource, **{"If-Match": 'W/"1"'})

    run()


def test_catalog_bundles_survive_hostile_entries(catalog):
    entry = st.fixed_dictionaries({"resource": hostile_resource("Medication", {"resourceType": "Medication",
                                                                              "status": "active"}),
                                   "request": st.one_of(hostile_json, st.fixed_dictionaries({
                                       "method": st.sampled_from(["POST", "PUT", "DELETE", "GET", "PATCH", "x"]),
                                       "url": st.sampled_from(["Medication", "Medication/a", "Medication?code=x",
                                                               "../x", "Medication/a/_history/1", ""])}))})

    @fuzz_settings(25)
    @given(st.fixed_dictionaries({"resourceType": st.just("Bundle"),
                                  "type": st.sampled_from(["batch", "transaction", "collection", "x"]),
                                  "entry": st.lists(entry, max_size=4)}))
    def run(bundle: dict) -> None:
        status, body = send(catalog, "POST", "/fhir", bundle)
        if status == 200 and bundle["type"] == "transaction":
            assert body["type"] == "transaction-response"

    run()


@pytest.mark.parametrize("resource_type", ["CarePlan", "QuestionnaireResponse", "AuditEvent"])
def test_careplan_searches_survive_hostile_queries(careplan, resource_type):
    @fuzz_settings(15)
    @given(search_query.filter(lambda q: all(no_surrogates(k) and no_surrogates(v) for k, v in q)))
    def run(query: list[tuple[str, str]]) -> None:
        response = careplan.get(f"/fhir/{resource_type}?{urlencode(query)}")
        assert_fhir_response(response, str(query))

    run()


@pytest.mark.parametrize("resource_type", ["ActivityDefinition", "PlanDefinition", "ValueSet"])
def test_catalog_searches_survive_hostile_queries(catalog, resource_type):
    @fuzz_settings(15)
    @given(search_query.filter(lambda q: all(no_surrogates(k) and no_surrogates(v) for k, v in q)),
           st.booleans())
    def run(query: list[tuple[str, str]], by_post: bool) -> None:
        if by_post:
            response = catalog.post(f"/fhir/{resource_type}/_search", content=urlencode(query),
                                    headers={"content-type": "application/x-www-form-urlencoded"})
        else:
            response = catalog.get(f"/fhir/{resource_type}?{urlencode(query)}")
        assert_fhir_response(response, str(query))

    run()


PATCH_PATHS = ["/status", "/note", "/note/-", "/note/0", "/note/-1", "/note/01", "/note/99", "/meta",
               "/meta/security", "/meta/tag", "/meta/tag/0", "/meta/source", "/meta/profile", "/meta/versionId",
               "/subject", "/activity/0", "/id", "", "/", "/~1", "note"]
META_FORGERIES = [
    {"op": "add", "path": "/meta/source", "value": "https://attacker.example"},
    {"op": "add", "path": "/meta/tag", "value": [{"system": "https://attacker.example", "code": "trusted"}]},
    {"op": "add", "path": "/meta/security",
     "value": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "U"}]},
    {"op": "replace", "path": "/meta", "value": {"profile": ["https://attacker.example/StructureDefinition/x"]}},
    {"op": "add", "path": "/note/-1", "value": {"text": "Sneaked in."}},
]
PATCH_VALUES = ["https://attacker.example", {"text": "x"}, [{"text": "x"}], "active", "revoked",
                [{"system": "https://attacker.example", "code": "trusted"}],
                {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "U"},
                {"reference": "Patient/someone-else"}]


def test_careplan_patches_never_touch_meta_or_more_than_status_and_notes(careplan):
    plan = careplan.post("/fhir/CarePlan/$generate", json=example("atrophic-chest-visible-vessels"),
                         headers=FHIR_JSON).json()
    url = f"/fhir/CarePlan/{plan['id']}"
    server_owned = {k: v for k, v in plan["meta"].items() if k not in ("versionId", "lastUpdated")}
    frozen = {k: v for k, v in plan.items() if k not in ("meta", "status", "note")}
    operation = st.fixed_dictionaries(
        {"op": st.sampled_from(["add", "remove", "replace", "move", "copy", "test", "drop"]),
         "path": st.one_of(st.sampled_from(PATCH_PATHS), hostile_text)},
        optional={"value": st.one_of(st.sampled_from(PATCH_VALUES), hostile_json),
                  "from": st.sampled_from(PATCH_PATHS)})

    @fuzz_settings(40)
    @given(st.lists(st.one_of(operation, st.sampled_from(META_FORGERIES)), max_size=4), st.booleans())
    def run(operations: list[dict], with_a_note: bool) -> None:
        if with_a_note:  # a change the plan accepts, for anything else to ride along with
            operations = [*operations, {"op": "add", "path": "/note/-", "value": {"text": "Seen."}}]
        version = careplan.get(url).json()["meta"]["versionId"]
        response = careplan.patch(url, content=body_of(operations),
                                  headers={"content-type": "application/json-patch+json", "If-Match": f'W/"{version}"'})
        assert_fhir_response(response, f"PATCH {operations}")
        stored = careplan.get(url).json()
        assert {k: v for k, v in stored["meta"].items() if k not in ("versionId", "lastUpdated")} == server_owned
        assert {k: v for k, v in stored.items() if k not in ("meta", "status", "note")} == frozen

    run()
