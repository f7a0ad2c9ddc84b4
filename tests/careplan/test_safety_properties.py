"""Clinical safety of every plan, over generated assessments: nothing screening excluded is offered anywhere, no
incompatible procedures closer than their gap, the weekly visit budget holds, every activity serves a goal of the
plan, and no session falls on a closed day or a public holiday of the clinic's country.

The bulk runs in-process through the real planner and the shipped catalog content; a small sample goes over HTTP
through `$generate` and `$apply`. The expectations are computed here from the catalog files and the `holidays`
package, independently of the planner.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import cache
from typing import Any

import holidays
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.careplan.scheduling import ClinicCalendar
from services.careplan.settings import CareplanSettings
from services.careplan.settings import public_holidays as settings_holidays
from services.catalog.settings import CONTENT_DIR
from tests.support.apps import FHIR_JSON

pytestmark = pytest.mark.xdist_group("planner")

BASE = "https://fhir.cicatrix.org"
EXT = f"{BASE}/StructureDefinition/"
EXAMPLES = int(os.environ.get("CICATRIX_FUZZ_EXAMPLES", "0")) or 2000


def _content(kind: str) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in (CONTENT_DIR / kind).glob("*.json")}


ACTIVITIES = _content("ActivityDefinition")
BY_URL = {a["url"]: a for a in ACTIVITIES.values()}
MEDICATIONS = _content("Medication")
SCAR_CARE = "https://fhir.cicatrix.org/CodeSystem/scar-care"
KNOWLEDGE = _content("MedicationKnowledge")
PROTOCOLS = _content("PlanDefinition")
SUBSTANCES = {c["code"]: c["display"] for c in json.loads((CONTENT_DIR / "CodeSystem/substance.json").read_text())[
    "concept"]}
MODALITIES = [c["code"] for c in json.loads((CONTENT_DIR / "CodeSystem/scar-modality.json").read_text())["concept"]]
SITES = [c["code"] for c in json.loads((CONTENT_DIR / "CodeSystem/body-site.json").read_text())["concept"]]
SCAR_TYPES = ["atrophic", "hypotrophic", "striae"]


def _ext(resource: dict[str, Any], name: str) -> list[Any]:
    return [v for e in resource.get("extension", []) if e["url"] == EXT + name
            for k, v in e.items() if k.startswith("value")]


def _titles_by_modality() -> dict[str, set[str]]:
    """Every name a modality goes by: its definitions' titles and the protocol actions that plan or offer it."""
    names: dict[str, set[str]] = defaultdict(set)
    for definition in ACTIVITIES.values():
        code = definition["code"]["coding"][0]["code"]
        names[code].add(definition["title"])

    def walk(actions: list[dict[str, Any]]) -> None:
        for action in actions:
            canonical = action.get("definitionCanonical", "").split("|")[0]
            if canonical in BY_URL and action.get("title"):
                names[BY_URL[canonical]["code"]["coding"][0]["code"]].add(action["title"])
            walk(action.get("action", []))
    for protocol in PROTOCOLS.values():
        walk(protocol.get("action", []))
    return names


MODALITY_NAMES = _titles_by_modality()
RETINOIDS = {mid for mid, k in KNOWLEDGE.items()
             if any(c["code"] == "retinoid" for t in k["productType"] for c in t["coding"])}


def _ingredients(medication: dict[str, Any]) -> set[str]:
    return {c["code"] for i in medication.get("ingredient", []) for c in i["itemCodeableConcept"].get("coding", [])
            if c["system"] == f"{BASE}/CodeSystem/substance"}


def coding(system: str, code: str) -> dict[str, str]:
    return {"system": f"{BASE}/CodeSystem/{system}", "code": code}


# ------------------------------------------------------------------------------------------ generated input


def generate_parameters(assessment_id: str, items: list[dict[str, Any]], start: date) -> dict[str, Any]:
    """A `$generate` request for Patient/p with these assessment answers."""
    return {"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueReference": {"reference": "Patient/p"}},
        {"name": "assessment", "resource": {
            "resourceType": "QuestionnaireResponse", "id": assessment_id,
            "questionnaire": f"{BASE}/Questionnaire/scar-assessment|1.0.0",
            "status": "completed", "subject": {"reference": "Patient/p"}, "item": items}},
        {"name": "start", "valueDate": start.isoformat()}]}


def answered(link_id: str, *answers: dict[str, Any]) -> dict[str, Any]:
    return {"linkId": link_id, "answer": list(answers)}



CALENDARS = [("DE", "BE"), ("DE", ""), ("FR", ""), ("US", "CA"), ("", "")]
"""Clinic countries and subdivisions (ISO 3166); the last has no public holidays."""


@st.composite
def cases(draw: st.DrawFn) -> tuple[dict[str, Any], Clinic]:
    pregnant, breastfeeding = draw(st.booleans()), draw(st.booleans())
    items = [
        {"linkId": "scar-type", "answer": [{"valueCoding": coding("scar-type", draw(st.sampled_from(SCAR_TYPES)))}]},
        {"linkId": "body-site", "answer": [{"valueCoding": coding("body-site", draw(st.sampled_from(SITES)))}]},
        {"linkId": "scar-age-months", "answer": [{"valueInteger": draw(st.integers(0, 360))}]},
        {"linkId": "vessels-visible", "answer": [{"valueBoolean": draw(st.booleans())}]},
        {"linkId": "pregnant", "answer": [{"valueBoolean": pregnant}]},
        {"linkId": "breastfeeding", "answer": [{"valueBoolean": breastfeeding}]},
    ]
    allergies = draw(st.lists(st.sampled_from(sorted(SUBSTANCES)), max_size=4, unique=True))
    if allergies:
        items.append({"linkId": "allergy", "answer": [
            {"valueCoding": coding("substance", a)} if draw(st.booleans()) else {"valueString": SUBSTANCES[a]}
            for a in allergies]})
    declined = draw(st.lists(st.sampled_from(MODALITIES), max_size=6, unique=True))
    if declined:
        items.append({"linkId": "declined-modality", "answer": [{"valueCoding": coding("scar-modality", m)}
                                                               for m in declined]})
    # within the plausible start window around today (CAREPLAN_PLAN_START_PAST_DAYS / _FUTURE_DAYS)
    start = draw(st.dates(min_value=date.today() - timedelta(days=365), max_value=date.today() + timedelta(days=700)))
    parameters = generate_parameters("qr", items, start)
    country, subdivision = draw(st.sampled_from(CALENDARS))
    clinic = Clinic(
        weekdays=frozenset(draw(st.lists(st.integers(0, 5), min_size=2, max_size=6, unique=True))),
        closed=frozenset(start + timedelta(days=d) for d in draw(st.lists(st.integers(0, 500), max_size=12))),
        max_per_day=draw(st.integers(1, 3)), max_visits_per_week=draw(st.integers(1, 4)),
        country=country, subdivision=subdivision)
    return parameters, clinic


@dataclass(frozen=True)
class Clinic:
    """A clinic configuration; the planner gets it as the calendar CareplanSettings.calendar() would build."""

    weekdays: frozenset[int] = frozenset(range(5))
    closed: frozenset[date] = frozenset()
    max_per_day: int = 2
    max_visits_per_week: int = 3
    country: str = "DE"
    subdivision: str = ""

    def calendar(self) -> ClinicCalendar:
        return ClinicCalendar(working_days=self.weekdays, closed=self.closed, max_per_day=self.max_per_day,
                              max_visits_per_week=self.max_visits_per_week, timezone="Europe/Berlin",
                              holidays=settings_holidays(self.country, self.subdivision))

    @classmethod
    def of(cls, configured: CareplanSettings) -> Clinic:
        calendar = configured.calendar()
        return cls(calendar.working_days, calendar.closed, calendar.max_per_day, calendar.max_visits_per_week,
                   configured.CLINIC_COUNTRY, configured.CLINIC_SUBDIVISION)


# ------------------------------------------------------------------------------------------ the invariants


def answers(parameters: dict[str, Any], link_id: str) -> list[Any]:
    assessment = next(p["resource"] for p in parameters["parameter"] if p["name"] == "assessment")
    for item in assessment["item"]:
        if item["linkId"] == link_id:
            return [next(iter(a.values())) for a in item["answer"]]
    return []


def excluded_by_screening(parameters: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(Medication ids, modality codes) the assessment rules out, computed from the content files."""
    medications: set[str] = set()
    if True in answers(parameters, "pregnant") or True in answers(parameters, "breastfeeding"):
        medications |= RETINOIDS
    allergens = {a["code"] if isinstance(a, dict) else next(c for c, d in SUBSTANCES.items() if d.lower() == a.lower())
                 for a in answers(parameters, "allergy")}
    medications |= {mid for mid, m in MEDICATIONS.items() if _ingredients(m) & allergens}
    modalities = {m["code"] for m in answers(parameters, "declined-modality")}
    return medications, modalities


def expected_reasons(parameters: dict[str, Any], medication_id: str) -> set[str]:
    """The exclusion-reason codes (scar-care) that each apply to one preparation, computed from the content."""
    reasons = set()
    if medication_id in RETINOIDS:
        reasons |= {"contraindicated-pregnancy"} if True in answers(parameters, "pregnant") else set()
        reasons |= {"contraindicated-breastfeeding"} if True in answers(parameters, "breastfeeding") else set()
    allergens = {a["code"] if isinstance(a, dict) else next(c for c, d in SUBSTANCES.items() if d.lower() == a.lower())
                 for a in answers(parameters, "allergy")}
    if _ingredients(MEDICATIONS[medication_id]) & allergens:
        reasons.add("allergy")
    return reasons


def check_reasons_kept(parameters: dict[str, Any], plan: dict[str, Any]) -> None:
    """Each preparation left out carries every reason that applies to it (pregnant and breastfeeding: both)."""
    for activity in plan["activity"]:
        detail = activity["detail"]
        medication = detail.get("productReference", {}).get("reference", "").removeprefix("Medication/")
        if not detail.get("doNotPerform") or medication not in MEDICATIONS:
            continue
        kept = {c["code"] for c in detail.get("statusReason", {}).get("coding", []) if c["system"] == SCAR_CARE}
        missing = expected_reasons(parameters, medication) - kept
        assert not missing, f"{medication} left out without the reasons {sorted(missing)}"


def offered_text(plan: dict[str, Any]) -> str:
    """Everything the plan offers: planned activities, their products, the alternatives, the schedule table."""
    parts = []
    for activity in plan["activity"]:
        detail = activity["detail"]
        if not detail.get("doNotPerform"):
            parts += [detail.get("description", ""), json.dumps(detail.get("productReference", {})),
                      json.dumps(detail.get("productCodeableConcept", {}))]
    parts += [n["text"] for n in plan.get("note", []) if n["text"].startswith("Alternatives")]
    parts += re.findall(r"<table>.*?</table>", plan["text"]["div"], flags=re.S)
    return "\n".join(parts)


@cache
def public_holidays(country: str, subdivision: str) -> holidays.HolidayBase | dict[date, str]:
    return holidays.country_holidays(country, subdiv=subdivision or None) if country else {}


def check_plan(parameters: dict[str, Any], plan: dict[str, Any], clinic: Clinic) -> None:
    check_reasons_kept(parameters, plan)
    medications, modalities = excluded_by_screening(parameters)
    offered = offered_text(plan)
    for mid in medications:
        name = MEDICATIONS[mid]["code"]["text"]
        assert not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", offered), f"{name} is excluded but offered"
    for code in modalities:
        for name in MODALITY_NAMES[code]:
            assert name not in offered, f"declined {code} offered as {name!r}"
    planned = [a["detail"] for a in plan["activity"] if not a["detail"].get("doNotPerform")]
    assert planned, "a stored plan always has something to do"
    goals = {g["reference"] for g in plan.get("goal", [])}
    contained = {f"#{c['id']}" for c in plan.get("contained", []) if c["resourceType"] == "Goal"}
    sessions: dict[str, list[date]] = {}
    for detail in planned:
        definition = BY_URL[detail["instantiatesCanonical"][0].split("|")[0]]
        assert definition["code"]["coding"][0]["code"] not in modalities
        for reference in [detail.get("productReference", {}).get("reference", "")]:
            assert reference.removeprefix("Medication/") not in medications
        links = {g["reference"] for g in detail.get("goal", [])}
        assert links <= goals <= contained, f"{definition['id']} links a goal the plan does not contain"
        if detail["kind"] != "CommunicationRequest":  # a treatment, not the instruction to inform the patient
            assert links, f"{definition['id']} serves no goal of the plan"
        days = [datetime.fromisoformat(e).date() for e in detail.get("scheduledTiming", {}).get("event", [])]
        if days:
            sessions[definition["id"]] = days
    public = public_holidays(clinic.country, clinic.subdivision)
    per_day: Counter[date] = Counter()
    for key, days in sessions.items():
        interval = [d["value"] for d in _ext(ACTIVITIES[key], "minimum-interval")] or [1]
        assert all((b - a).days >= interval[0] for a, b in zip(days, days[1:], strict=False)), "minimum interval"
        for day in days:
            assert day.weekday() in clinic.weekdays and day not in clinic.closed, f"{key} on a closed day {day}"
            assert day not in public, f"{key} on a public holiday {day} ({public.get(day)})"
            per_day[day] += 1
    assert max(per_day.values(), default=0) <= clinic.max_per_day, "daily cap"
    weeks = Counter(day.isocalendar()[:2] for day in per_day)
    assert max(weeks.values(), default=0) <= clinic.max_visits_per_week, "visits per ISO week over the budget"
    for key, days in sessions.items():
        conflicts = {c.split("|")[0].rsplit("/", 1)[1] for c in _ext(ACTIVITIES[key], "not-same-day-as")}
        for other in conflicts & set(sessions):
            gap = max([d["value"] for d in _ext(ACTIVITIES[key], "not-same-day-gap")]
                      + [d["value"] for d in _ext(ACTIVITIES[other], "not-same-day-gap")] + [1])
            nearest = min(abs((a - b).days) for a in days for b in sessions[other])
            assert nearest >= gap, f"{key} and {other} only {nearest} days apart (at least {gap})"


def check_refusal(parameters: dict[str, Any], outcome: dict[str, Any]) -> None:
    """A refusal is only for an assessment that leaves nothing to plan, and it lists what was left out."""
    issues = outcome["issue"]
    assert "no in-clinic procedure and no home care" in issues[0]["diagnostics"], issues
    assert len(issues) > 1, "every exclusion is listed"
    _, modalities = excluded_by_screening(parameters)
    assert "home-topical-application" in modalities or answers(parameters, "allergy"), \
        "home care only goes when declined or every preparation is excluded"


# ------------------------------------------------------------------------------------------ in-process bulk


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=cases())
def test_no_plan_offers_anything_screening_excluded_or_breaks_a_scheduling_rule(runner, case):
    parameters, clinic = case
    kind, result = runner.plan(parameters, clinic.calendar())
    if kind == "careplan":
        check_plan(parameters, result, clinic)
    else:
        check_refusal(parameters, result)


def test_a_patient_who_declines_everything_is_refused_with_every_exclusion(runner):
    clinic = Clinic()
    parameters = generate_parameters("qr-none", [
        answered("scar-type", {"valueCoding": coding("scar-type", "atrophic")}),
        answered("body-site", {"valueCoding": coding("body-site", "anterior-shin")}),
        answered("scar-age-months", {"valueInteger": 30}),
        answered("vessels-visible", {"valueBoolean": True}),
        answered("pregnant", {"valueBoolean": True}),
        answered("breastfeeding", {"valueBoolean": False}),
        answered("declined-modality", *({"valueCoding": coding("scar-modality", m)} for m in (
            "aha-peel", "vacuum-massage", "mesotherapy", "electrophoresis", "phonophoresis",
            "home-topical-application")))], date(2027, 1, 4))
    kind, outcome = runner.plan(parameters, clinic.calendar())
    assert kind == "outcome"
    check_refusal(parameters, outcome)
    listed = " ".join(i["diagnostics"] for i in outcome["issue"])
    for title in ("AHA peels", "Vacuum massage", "Mesotherapy", "Electrophoresis", "Phonophoresis", "Madecassol"):
        assert title in listed


def test_the_nuclea_regimen_takes_over_when_the_gels_are_excluded(runner):
    parameters = generate_parameters("qr-gels", [
        answered("scar-type", {"valueCoding": coding("scar-type", "atrophic")}),
        answered("body-site", {"valueCoding": coding("body-site", "dorsum-of-hand")}),
        answered("scar-age-months", {"valueInteger": 6}),
        answered("vessels-visible", {"valueBoolean": False}),
        answered("pregnant", {"valueBoolean": False}),
        answered("breastfeeding", {"valueBoolean": False}),
        answered("allergy", {"valueCoding": coding("substance", "centella-asiatica")},
                 {"valueCoding": coding("substance", "onion-extract")}, {"valueString": "camphor"})],
        date(2027, 1, 4))
    kind, plan = runner.plan(parameters, Clinic().calendar())
    assert kind == "careplan"
    home = [a["detail"]["instantiatesCanonical"][0].split("|")[0].rsplit("/", 1)[1] for a in plan["activity"]
            if a["detail"]["kind"] == "MedicationRequest" and not a["detail"].get("doNotPerform")]
    assert home == ["home-care-nuclea", "home-care-synchro-immuno", "home-care-cells-life"]
    check_plan(parameters, plan, Clinic())


# ------------------------------------------------------------------------------------------ over HTTP


@settings(max_examples=6, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_generate_and_apply_over_http_keep_the_same_invariants(careplan, r4_validator, case):
    parameters, _ = case
    clinic = Clinic.of(CareplanSettings())  # the service's own calendar: the defaults
    assessment = next(p["resource"] for p in parameters["parameter"] if p["name"] == "assessment")
    assessment["id"] = "qr-" + hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:16]
    generated = careplan.post("/fhir/CarePlan/$generate", json=parameters, headers=FHIR_JSON)
    applied = careplan.post("/fhir/PlanDefinition/$apply", headers=FHIR_JSON, json={
        "resourceType": "Parameters", "parameter": [
            {"name": "subject", "valueString": "Patient/p"},
            {"name": "data", "resource": {"resourceType": "Bundle", "type": "collection",
                                          "entry": [{"resource": assessment}]}},
            parameters["parameter"][2]]})
    for response in (generated, applied):
        body = response.json()
        r4_validator.assert_valid(body)
        if response.status_code in (200, 201):
            if body["resourceType"] == "Parameters":  # $apply with plausibility warnings: plan and outcome
                outcome = next(p["resource"] for p in body["parameter"] if p["name"] == "outcome")
                assert outcome["resourceType"] == "OperationOutcome"
                body = next(p["resource"] for p in body["parameter"] if p["name"] == "return")
            check_plan(parameters, body, clinic)
        else:
            assert response.status_code == 422, response.text
            check_refusal(parameters, response.json())
