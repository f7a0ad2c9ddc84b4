"""The audit trail of the care-plan service: an R4 AuditEvent per access to patient data, searchable, and a
request that cannot be recorded does not succeed (services/fhir/audit.py)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy.exc import OperationalError

from services.fhir.audit import AuditTrail, GroupCommit
from services.fhir.searchparams import Criterion, SearchQuery
from tests.careplan.conftest import example
from tests.support.apps import FHIR_JSON, careplan_app, running

AUDITOR = "system/AuditEvent.rs"
WRITER = "system/CarePlan.c"
READER = "system/CarePlan.rs system/QuestionnaireResponse.rs"


def generate(client, headers: dict[str, str], name: str = "atrophic-chest-visible-vessels"):
    return client.post("/fhir/CarePlan/$generate", json=example(name), headers=FHIR_JSON | headers)


def audit_events(client, issuer, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/fhir/AuditEvent", params={"_count": 200, **params}, headers=issuer.bearer(AUDITOR))
    assert response.status_code == 200, response.text
    return [entry["resource"] for entry in response.json().get("entry", [])]


def entities(event: dict[str, Any]) -> set[str]:
    return {e["what"]["reference"] for e in event.get("entity", [])}


def subtypes(event: dict[str, Any]) -> list[str]:
    return [coding["code"] for coding in event["subtype"]]


def test_generate_is_recorded_with_who_what_when_outcome_and_source(secured_careplan, issuer, r4_validator):
    plan = generate(secured_careplan, issuer.bearer(WRITER, sub="dr-house", client_id="ehr-engine")).json()
    [event] = audit_events(secured_careplan, issuer, entity=f"CarePlan/{plan['id']}")
    r4_validator.assert_valid(event)
    assert event["type"]["code"] == "rest" and event["type"]["system"].endswith("audit-event-type")
    assert subtypes(event) == ["operation", "generate"]
    assert event["action"] == "E" and event["outcome"] == "0"
    assert entities(event) == {f"CarePlan/{plan['id']}", plan["supportingInfo"][0]["reference"], "Patient/example-1"}
    user, client = event["agent"]
    assert user["requestor"] is True and user["who"]["identifier"]["value"] == "dr-house"
    assert user["who"]["identifier"]["system"] == issuer.issuer
    assert client["requestor"] is False and client["who"]["identifier"]["value"] == "ehr-engine"
    assert event["source"]["observer"]["identifier"]["value"] == "careplan"
    recorded = datetime.fromisoformat(event["recorded"])
    assert abs(datetime.now(UTC) - recorded) < timedelta(minutes=1)


def test_reads_searches_history_and_vread_are_recorded(secured_careplan, issuer, r4_validator):
    plan = generate(secured_careplan, issuer.bearer(WRITER)).json()
    other = generate(secured_careplan, issuer.bearer(WRITER), "hypotrophic-abdomen").json()
    reader = issuer.bearer(READER, sub="nurse-1")
    for path in (f"/fhir/CarePlan/{plan['id']}", f"/fhir/CarePlan/{plan['id']}/_history",
                 f"/fhir/CarePlan/{plan['id']}/_history/1", "/fhir/CarePlan?status=draft",
                 f"/fhir/{plan['supportingInfo'][0]['reference']}"):
        assert secured_careplan.get(path, headers=reader).status_code == 200, path
    events = audit_events(secured_careplan, issuer, agent="nurse-1")
    assert sorted(subtypes(e)[0] for e in events) == ["history-instance", "read", "read", "search-type",
                                                      "search-type", "vread"]
    assert {e["action"] for e in events} == {"R"}
    searches = [entities(e) for e in events if subtypes(e) == ["search-type"]]  # one event per patient found
    assert {frozenset(s) for s in searches} == {frozenset({f"CarePlan/{plan['id']}", "Patient/example-1"}),
                                                frozenset({f"CarePlan/{other['id']}", other["subject"]["reference"]})}
    for event in events:
        r4_validator.assert_valid(event)


def test_a_patient_read_is_checked_and_recorded_on_one_parse_of_the_plan(secured_careplan, issuer, monkeypatch):
    """The compartment check of the read, the check of the answer and the audit event share the stored plan's
    parse: a plan is tens of kilobytes, and a patient app reads its plans often."""
    plan = generate(secured_careplan, issuer.bearer(WRITER)).json()
    parsed: list[bytes] = []
    loads = orjson.loads

    def counted(data: bytes | str) -> Any:
        parsed.append(data if isinstance(data, bytes) else data.encode())
        return loads(data)

    monkeypatch.setattr(orjson, "loads", counted)
    response = secured_careplan.get(f"/fhir/CarePlan/{plan['id']}",
                                    headers=issuer.bearer("patient/CarePlan.rs", patient="example-1", sub="app-1"))
    monkeypatch.undo()
    assert response.status_code == 200
    assert parsed.count(response.content) == 1
    [event] = audit_events(secured_careplan, issuer, agent="app-1")
    assert subtypes(event) == ["read"] and entities(event) == {f"CarePlan/{plan['id']}", "Patient/example-1"}


def test_failures_and_denials_are_recorded_but_unauthenticated_requests_are_not(secured_careplan, issuer):
    reader = issuer.bearer(READER, sub="nurse-2")
    assert secured_careplan.get("/fhir/CarePlan/does-not-exist", headers=reader).status_code == 404
    assert secured_careplan.get("/fhir/Task", headers=issuer.bearer("system/CarePlan.rs", sub="nurse-2")
                                ).status_code == 403
    broken = example("atrophic-chest-visible-vessels")
    broken["parameter"] = [p for p in broken["parameter"] if p["name"] != "assessment"]
    assert secured_careplan.post("/fhir/CarePlan/$generate", json=broken,
                                 headers=FHIR_JSON | issuer.bearer(WRITER, sub="nurse-2")).status_code in (400, 422)
    events = audit_events(secured_careplan, issuer, agent="nurse-2")
    assert {(subtypes(e)[0], e["outcome"]) for e in events} == {("read", "4"), ("search-type", "4"),
                                                                ("operation", "4")}
    not_found = next(e for e in events if subtypes(e)[0] == "read")
    assert entities(not_found) == {"CarePlan/does-not-exist"} and not_found["outcomeDesc"] == "HTTP 404"
    before = len(audit_events(secured_careplan, issuer))
    assert secured_careplan.get("/fhir/CarePlan").status_code == 401
    assert len(audit_events(secured_careplan, issuer)) == before


def test_task_access_retry_apply_and_updates_are_recorded(secured_careplan, issuer):
    plan = generate(secured_careplan, issuer.bearer(WRITER)).json()
    token = issuer.bearer("system/Task.rus system/CarePlan.rus", sub="ops-1")
    task = secured_careplan.get("/fhir/Task", params={"focus": f"CarePlan/{plan['id']}"},
                                headers=token).json()["entry"][0]["resource"]
    assert secured_careplan.get(f"/fhir/Task/{task['id']}", headers=token).status_code == 200
    assert secured_careplan.post(f"/fhir/Task/{task['id']}/$retry", headers=token).status_code == 409
    changed = dict(plan, status="active")
    update = secured_careplan.put(f"/fhir/CarePlan/{plan['id']}", json=changed,
                                  headers=FHIR_JSON | token | {"If-Match": 'W/"1"'})
    assert update.status_code == 200, update.text
    events = audit_events(secured_careplan, issuer, agent="ops-1")
    by_kind = {tuple(subtypes(e)): e for e in events}
    assert by_kind[("search-type",)]["action"] == "R"
    assert f"Task/{task['id']}" in entities(by_kind[("search-type",)])
    assert by_kind[("read",)]["action"] == "R" and "Patient/example-1" in entities(by_kind[("read",)])
    assert by_kind[("operation", "retry")]["action"] == "E" and by_kind[("operation", "retry")]["outcome"] == "4"
    assert by_kind[("update",)]["action"] == "U" and by_kind[("update",)]["outcome"] == "0"
    assert entities(by_kind[("update",)]) == {f"CarePlan/{plan['id']}", "Patient/example-1"}


def test_the_trail_is_searchable_by_entity_agent_date_type_action_and_outcome(secured_careplan, issuer,
                                                                              r4_validator):
    plan = generate(secured_careplan, issuer.bearer(WRITER, sub="dr-a", client_id="engine-a")).json()
    secured_careplan.get(f"/fhir/CarePlan/{plan['id']}", headers=issuer.bearer(READER, sub="dr-b"))
    secured_careplan.get("/fhir/CarePlan/missing", headers=issuer.bearer(READER, sub="dr-b"))
    today = datetime.now(UTC).date().isoformat()
    assert len(audit_events(secured_careplan, issuer, entity=f"CarePlan/{plan['id']}")) == 2
    assert len(audit_events(secured_careplan, issuer, entity=plan["id"])) == 2
    assert len(audit_events(secured_careplan, issuer, agent="dr-b")) == 2
    assert len(audit_events(secured_careplan, issuer, agent="engine-a")) == 1
    assert len(audit_events(secured_careplan, issuer, agent="dr-a", date=f"ge{today}")) == 1
    assert audit_events(secured_careplan, issuer, agent="dr-a", date="lt2000-01-01") == []
    assert len(audit_events(secured_careplan, issuer, agent="dr-b", action="R", outcome="4")) == 1
    assert len(audit_events(secured_careplan, issuer, type="http://terminology.hl7.org/CodeSystem/"
                                                             "audit-event-type|rest", agent="dr-a")) == 1
    assert len(audit_events(secured_careplan, issuer, patient="Patient/example-1", agent="dr-b")) == 1
    bundle = secured_careplan.get("/fhir/AuditEvent", params={"entity": f"CarePlan/{plan['id']}"},
                                  headers=issuer.bearer(AUDITOR))
    r4_validator.assert_valid(bundle.json())
    assert bundle.headers["cache-control"] == "no-store"


def test_reading_the_trail_is_not_itself_recorded(secured_careplan, issuer):
    generate(secured_careplan, issuer.bearer(WRITER))
    first = audit_events(secured_careplan, issuer)
    assert audit_events(secured_careplan, issuer) == first


def test_no_phi_beyond_references_is_recorded(secured_careplan, issuer):
    parameters = example("atrophic-chest-visible-vessels")
    subject = next(p for p in parameters["parameter"] if p["name"] == "subject")
    subject["valueReference"]["display"] = "Philomena Quarrington"
    assessment = next(p for p in parameters["parameter"] if p["name"] == "assessment")["resource"]
    assessment["subject"]["display"] = "Philomena Quarrington"
    response = secured_careplan.post("/fhir/CarePlan/$generate?identifier=MRN-55501", json=parameters,
                                     headers=FHIR_JSON | issuer.bearer(WRITER))
    assert response.status_code == 201
    secured_careplan.get("/fhir/CarePlan", params={"identifier": "MRN-55502"}, headers=issuer.bearer(READER))
    text = json.dumps(audit_events(secured_careplan, issuer))
    for phi in ("Philomena", "Quarrington", "MRN-5550", "scar", "atrophic"):
        assert phi not in text


@pytest.mark.parametrize("path", ["/fhir/CarePlan/{id}", "/fhir/CarePlan?status=draft",
                                  "/fhir/Task?focus=CarePlan/{id}"])
def test_a_read_that_cannot_be_recorded_fails_and_discloses_nothing(secured_careplan, issuer, monkeypatch,
                                                                    r4_validator, path):
    plan = generate(secured_careplan, issuer.bearer(WRITER)).json()

    async def broken(*_: Any) -> None:
        raise OperationalError("INSERT INTO careplan_resource ...", {}, Exception("disk full"))

    monkeypatch.setattr(AuditTrail, "record", broken)
    response = secured_careplan.get(path.format(id=plan["id"]), headers=issuer.bearer(READER + " system/Task.rs"))
    assert response.status_code == 503
    body = response.json()
    r4_validator.assert_valid(body)
    assert body["resourceType"] == "OperationOutcome" and "audit" in body["issue"][0]["diagnostics"]
    assert plan["id"] not in response.text and "example-1" not in response.text


def test_a_generate_that_cannot_be_recorded_is_answered_503_and_its_retry_is_recorded(secured_careplan, issuer,
                                                                                       monkeypatch):
    async def broken(*_: Any) -> None:
        raise OperationalError("x", {}, None)

    with monkeypatch.context() as patched:
        patched.setattr(AuditTrail, "record", broken)
        assert generate(secured_careplan, issuer.bearer(WRITER)).status_code == 503
    again = generate(secured_careplan, issuer.bearer(WRITER))
    assert again.status_code == 200, "the plan was stored; the retry is answered with where it is"
    plan_id = again.headers["location"].split("/CarePlan/")[1].split("/")[0]
    assert len(audit_events(secured_careplan, issuer, entity=f"CarePlan/{plan_id}")) == 1


def test_a_crash_is_recorded_as_a_major_failure(secured_careplan, issuer, monkeypatch):
    planner = secured_careplan.app.state.ctx.extras["planner"]

    async def crash(*_: Any, **__: Any) -> None:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(planner, "draft_plan", crash)
    assert generate(secured_careplan, issuer.bearer(WRITER, sub="dr-crash")).status_code == 500
    [event] = audit_events(secured_careplan, issuer, agent="dr-crash")
    assert event["outcome"] == "12"


def test_with_auth_off_the_caller_is_recorded_as_anonymous(database_url, catalog_url, issuer, r4_validator):
    app = careplan_app(database_url, CATALOG_URL=catalog_url, LOG_LEVEL="WARNING", DISPATCHER="off")
    with running(app) as client:
        plan = client.post("/fhir/CarePlan/$generate", json=example("atrophic-pregnant"), headers=FHIR_JSON).json()
        bundle = client.get("/fhir/AuditEvent", params={"entity": f"CarePlan/{plan['id']}"}).json()
    [entry] = bundle["entry"]
    r4_validator.assert_valid(entry["resource"])
    assert entry["resource"]["agent"][0]["who"]["identifier"]["value"] == "anonymous"


def test_concurrent_events_share_commits_and_each_waits_for_its_own(database_url, catalog_url, monkeypatch):
    """Group commit: 40 requests recording at once take far fewer than 40 transactions, every event is stored
    and searchable, and when a batch cannot be stored every request waiting on it fails, not only the first."""
    app = careplan_app(database_url, CATALOG_URL=catalog_url, LOG_LEVEL="WARNING", DISPATCHER="off")
    with running(app):
        ctx = app.state.ctx
        store = ctx.extras["store"]
        trail = AuditTrail(store, service="careplan")
        commits = GroupCommit(trail, ctx.session)
        transactions: list[int] = []
        real_record = AuditTrail.record

        async def counting(self: AuditTrail, sessions: Any, events: list[dict[str, Any]], loop_db: Any = None) -> None:
            transactions.append(len(events))
            await real_record(self, sessions, events, loop_db)

        monkeypatch.setattr(AuditTrail, "record", counting)
        events = [_event(f"CarePlan/group-{n}") for n in range(40)]

        async def record_all(batch: list[dict[str, Any]]) -> list[Any]:
            return await asyncio.gather(*(commits.record(e) for e in batch), return_exceptions=True)

        assert asyncio.run(record_all(events)) == [None] * 40
        assert sum(transactions) == 40 and len(transactions) < 40
        with ctx.session() as session:
            for n in (0, 17, 39):
                entity = Criterion("entity", "reference", None, (f"CarePlan/group-{n}",))
                query = SearchQuery("AuditEvent", criteria=[entity])
                assert len(store.search(session, query).matches) == 1

        async def broken(*_: Any) -> None:
            raise OperationalError("INSERT INTO careplan_resource ...", {}, Exception("disk full"))

        monkeypatch.setattr(AuditTrail, "record", broken)
        failures = asyncio.run(record_all([_event(f"CarePlan/lost-{n}") for n in range(5)]))
        assert all(isinstance(f, OperationalError) for f in failures)
        monkeypatch.setattr(AuditTrail, "record", counting)
        assert asyncio.run(record_all([_event("CarePlan/after")])) == [None], "a failed batch does not stop the next"


def _event(reference: str) -> dict[str, Any]:
    return {"resourceType": "AuditEvent", "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                                                   "code": "rest"},
            "recorded": "2026-11-25T10:00:00.000Z", "agent": [{"requestor": True, "who": {"display": "test"}}],
            "source": {"observer": {"display": "test"}}, "entity": [{"what": {"reference": reference}}]}
