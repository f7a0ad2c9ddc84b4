"""Property tests over whole plans: random assessments, start dates and clinic calendars through the real
planner and the shipped catalog content (in-process catalog, real HTTP client code path)."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.careplan.examples import EXAMPLE_SETTINGS
from services.careplan.scheduling import ClinicCalendar
from services.catalog.settings import CONTENT_DIR

pytestmark = pytest.mark.xdist_group("planner")

SCAR_TYPES = ["atrophic", "hypotrophic", "striae"]
SITES = ["anterior-upper-chest", "shoulder-girdle", "anterior-shin", "dorsum-of-foot", "dorsum-of-hand", "face"]
SUBSTANCES = ["onion-extract", "camphor", "retinoic-acid", "centella-asiatica", "allantoin", "menthol"]
MODALITIES = ["aha-peel", "vacuum-massage", "mesotherapy", "electrophoresis", "phonophoresis"]
ACTIVITIES = {json.loads(p.read_text())["url"]: json.loads(p.read_text())
              for p in (CONTENT_DIR / "ActivityDefinition").glob("*.json")}


def coding(system: str, code: str) -> dict[str, str]:
    return {"system": f"https://fhir.cicatrix.org/CodeSystem/{system}", "code": code}


@st.composite
def assessments(draw: st.DrawFn) -> dict[str, Any]:
    items = [
        {"linkId": "scar-type", "answer": [{"valueCoding": coding("scar-type", draw(st.sampled_from(SCAR_TYPES)))}]},
        {"linkId": "body-site", "answer": [{"valueCoding": coding("body-site", draw(st.sampled_from(SITES)))}]},
        {"linkId": "scar-age-months", "answer": [{"valueInteger": draw(st.integers(0, 240))}]},
        {"linkId": "vessels-visible", "answer": [{"valueBoolean": draw(st.booleans())}]},
        {"linkId": "pregnant", "answer": [{"valueBoolean": draw(st.booleans())}]},
        {"linkId": "breastfeeding", "answer": [{"valueBoolean": draw(st.booleans())}]},
    ]
    allergies = draw(st.lists(st.sampled_from(SUBSTANCES), max_size=3, unique=True))
    if allergies:
        items.append({"linkId": "allergy", "answer": [
            {"valueCoding": coding("substance", a)} if draw(st.booleans()) else {"valueString": a.replace("-", " ")}
            for a in allergies]})
    declined = draw(st.lists(st.sampled_from(MODALITIES), max_size=2, unique=True))
    if declined:
        items.append({"linkId": "declined-modality", "answer": [{"valueCoding": coding("scar-modality", m)}
                                                               for m in declined]})
    start = draw(st.dates(min_value=date(2026, 1, 1), max_value=date(2027, 12, 31)))
    return {"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueReference": {"reference": "Patient/p"}},
        {"name": "assessment", "resource": {
            "resourceType": "QuestionnaireResponse", "id": "qr",
            "questionnaire": "https://fhir.cicatrix.org/Questionnaire/scar-assessment|1.0.0",
            "status": "completed", "subject": {"reference": "Patient/p"}, "item": items}},
        {"name": "start", "valueDate": start.isoformat()}]}


@st.composite
def calendars(draw: st.DrawFn) -> ClinicCalendar:
    days = frozenset(draw(st.lists(st.integers(0, 6), min_size=1, max_size=7, unique=True)))
    closed = frozenset(date(2026, 1, 1) + timedelta(days=d) for d in draw(st.lists(st.integers(0, 1100),
                                                                                      max_size=40)))
    return ClinicCalendar(working_days=days, closed=closed, max_per_day=draw(st.integers(1, 3)),
                          timezone=draw(st.sampled_from(["Europe/Berlin", "UTC", "Asia/Tokyo"])))


def answers(parameters: dict[str, Any], link_id: str) -> list[Any]:
    assessment = parameters["parameter"][1]["resource"]
    for item in assessment["item"]:
        if item["linkId"] == link_id:
            return [next(iter(a.values())) for a in item["answer"]]
    return []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parameters=assessments(), calendar=calendars())
def test_every_plan_keeps_every_invariant(runner, r4_validator, parameters, calendar):
    kind, plan = runner.plan(parameters, calendar)
    r4_validator.assert_valid(plan)
    if kind == "outcome":  # only when screening leaves nothing at all to plan
        assert "no in-clinic procedure and no home care" in plan["issue"][0]["diagnostics"], plan
        return
    assert kind == "careplan", plan
    start = date.fromisoformat(plan["period"]["start"])
    end = date.fromisoformat(plan["period"]["end"])
    assert start == date.fromisoformat(parameters["parameter"][2]["valueDate"])
    per_day: dict[date, list[str]] = defaultdict(list)
    for activity in plan["activity"]:
        detail = activity["detail"]
        if detail.get("doNotPerform"):
            assert detail["statusReason"]["text"], "every exclusion says why"
            continue
        events = [datetime.fromisoformat(e) for e in detail.get("scheduledTiming", {}).get("event", [])]
        definition = ACTIVITIES[detail["instantiatesCanonical"][0].split("|")[0]]
        gaps = [e.get("valueDuration", {}).get("value", 1) for e in definition.get("extension", [])
                if e["url"].endswith("/minimum-interval")]
        for previous, current in zip(events, events[1:], strict=False):
            assert (current.date() - previous.date()).days >= (gaps[0] if gaps else 1)
        for event in events:
            assert event.utcoffset() is not None
            assert start <= event.date() <= end
            assert calendar.is_open(event.date()), "sessions only on working, open days"
            per_day[event.date()].append(definition["url"])
    for day, urls in per_day.items():
        assert len(urls) <= calendar.max_per_day, f"daily cap exceeded on {day}"
        for url in urls:
            conflicts = {e["valueCanonical"].split("|")[0] for e in ACTIVITIES[url].get("extension", [])
                         if e["url"].endswith("/not-same-day-as")}
            assert not conflicts & set(urls), f"conflicting procedures on {day}"
    planned = json.dumps([a for a in plan["activity"] if not a["detail"].get("doNotPerform")]).lower()
    if True in answers(parameters, "pregnant") or True in answers(parameters, "breastfeeding"):
        assert "retinoic" not in planned, "no retinoid in pregnancy or breastfeeding"
    for declined in answers(parameters, "declined-modality"):
        assert f'"code": "{declined["code"]}"' not in planned, "a declined modality is never planned"
    old_atrophic = answers(parameters, "scar-type")[0]["code"] == "atrophic" and \
        answers(parameters, "scar-age-months")[0] >= 12
    if old_atrophic:
        assert (end - start).days >= 365, "old scars: the plan spans the 1 to 1.5 year course"


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parameters=assessments(), calendar=calendars())
def test_planning_is_deterministic(runner, parameters, calendar):
    assert runner.plan(parameters, calendar) == runner.plan(parameters, calendar)


def test_allergy_intolerance_resources_count_as_allergies(runner):
    base = {"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueReference": {"reference": "Patient/p"}},
        {"name": "assessment", "resource": {
            "resourceType": "QuestionnaireResponse", "id": "qr-ai",
            "questionnaire": "https://fhir.cicatrix.org/Questionnaire/scar-assessment|1.0.0",
            "status": "completed", "subject": {"reference": "Patient/p"}, "item": [
                {"linkId": "scar-type", "answer": [{"valueCoding": coding("scar-type", "atrophic")}]},
                {"linkId": "body-site", "answer": [{"valueCoding": coding("body-site", "face")}]},
                {"linkId": "scar-age-months", "answer": [{"valueInteger": 4}]},
                {"linkId": "vessels-visible", "answer": [{"valueBoolean": True}]},
                {"linkId": "pregnant", "answer": [{"valueBoolean": False}]},
                {"linkId": "breastfeeding", "answer": [{"valueBoolean": False}]}]}},
        {"name": "allergyIntolerance", "resource": {
            "resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/p"},
            "code": {"text": "Madecassol"}}},
        {"name": "start", "valueDate": "2026-03-02"}]}
    kind, plan = runner.plan(base, EXAMPLE_SETTINGS.calendar())
    assert kind == "careplan"
    excluded = " ".join(a["detail"]["description"] for a in plan["activity"] if a["detail"].get("doNotPerform"))
    assert "Madecassol" in excluded
