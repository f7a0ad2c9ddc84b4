"""Every sentence of a plan's narrative is true of the plan it is in.

The narrative is read back as XML and each kind of sentence is checked against the
plan's own data: the month-by-month calendar against the session events, the session
counts, the breaks against the gaps between clinic days, home care only when home care
is planned, every exclusion with every one of its reasons, and instructions to the
clinician instead of claims that something was done.
"""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from services.careplan.examples import EXAMPLE_SETTINGS, plan_example
from services.careplan.local import local_planner
from tests.careplan.conftest import assessment_of, example

pytestmark = pytest.mark.xdist_group("examples")
XHTML = "{http://www.w3.org/1999/xhtml}"


def variant(name: str, key: str, **answers: Any) -> dict[str, Any]:
    """An example request with some answers replaced (value[x] given as {'valueBoolean': True} etc.)."""
    parameters = example(name)
    response = assessment_of(parameters)
    response["id"] = response["identifier"]["value"] = key
    for link_id, values in answers.items():
        link_id = link_id.replace("_", "-")
        response["item"] = [i for i in response["item"] if i["linkId"] != link_id]
        if values:
            response["item"].append({"linkId": link_id, "answer": values})
    return parameters


VARIANTS = {
    "pregnant-and-breastfeeding": variant("atrophic-pregnant", "both", breastfeeding=[{"valueBoolean": True}]),
    "no-home-care-left": variant("atrophic-chest-visible-vessels", "allergic", allergy=[
        {"valueString": "centella asiatica extract"}, {"valueString": "allantoin"}, {"valueString": "camphor"}]),
    "peel-preparation-allergy": variant("atrophic-chest-visible-vessels", "peel", allergy=[
        {"valueString": "Alpha-hydroxy acids (fruit acids)"}]),
    "declined-and-allergic": variant("atrophic-chest-visible-vessels", "declined", allergy=[
        {"valueString": "alanine"}], declined_modality=[{"valueCoding": {
            "system": "https://fhir.cicatrix.org/CodeSystem/scar-modality", "code": "home-topical-application"}}]),
    "hypotrophic-on-the-shin": variant("hypotrophic-abdomen", "shin", body_site=[{"valueCoding": {
        "system": "https://fhir.cicatrix.org/CodeSystem/body-site", "code": "anterior-shin"}}]),
}


@pytest.fixture(scope="module")
def plans() -> dict[str, dict[str, Any]]:
    async def run() -> dict[str, dict[str, Any]]:
        names = ["atrophic-allergy-camphor", "atrophic-allergy-onion-extract", "atrophic-chest-visible-vessels",
                 "atrophic-declined-injections", "atrophic-pregnant", "atrophic-shin-old-no-vessels",
                 "hypotrophic-abdomen", "striae-thigh"]
        requests = {name: example(name) for name in names} | VARIANTS
        out = {}
        async with local_planner(EXAMPLE_SETTINGS) as planner:
            for name, parameters in requests.items():
                kind, resource = await plan_example(planner, parameters)
                assert kind == "careplan", (name, resource)
                out[name] = resource
        return out
    return asyncio.run(run())


def div(plan: dict[str, Any]) -> ET.Element:
    root = ET.fromstring(plan["text"]["div"])
    assert root.tag == f"{XHTML}div"
    return root


def text(element: ET.Element) -> str:
    return "".join(element.itertext())


def section(root: ET.Element, heading: str) -> list[str]:
    """The list items under the paragraph `heading` ([] when the section is absent)."""
    children = list(root)
    for i, child in enumerate(children):
        if child.tag == f"{XHTML}p" and text(child) == heading:
            return [text(li) for li in children[i + 1]]
    return []


def tables(root: ET.Element) -> list[list[list[str]]]:
    return [[[text(cell) for cell in row] for row in table.iter(f"{XHTML}tr")] for table in root.iter(f"{XHTML}table")]


def active(plan: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    details = [a["detail"] for a in plan["activity"]]
    return [d for d in details if d["kind"] == kind and not d.get("doNotPerform")]


def events(detail: dict[str, Any]) -> list[date]:
    return [datetime.fromisoformat(e).date() for e in detail.get("scheduledTiming", {}).get("event", [])]


PLAN_NAMES = ["atrophic-allergy-camphor", "atrophic-allergy-onion-extract", "atrophic-chest-visible-vessels",
              "atrophic-declined-injections", "atrophic-pregnant", "atrophic-shin-old-no-vessels",
              "hypotrophic-abdomen", "striae-thigh", *VARIANTS]


@pytest.mark.parametrize("name", PLAN_NAMES)
def test_the_calendar_shows_exactly_the_scheduled_session_days(plans, name):
    plan = plans[name]
    procedures = active(plan, "ServiceRequest")
    found = tables(div(plan))
    if not procedures:
        assert not found
        return
    summary, calendar = found
    assert [row[2] for row in summary[1:]] == [str(len(events(d))) for d in procedures], "session counts"
    titles = calendar[0][1:-1]
    assert titles == [d["description"].split(". ")[0] for d in procedures]
    shown: dict[str, dict[tuple[int, int], list[int]]] = defaultdict(dict)
    visits: dict[tuple[int, int], int] = {}
    for row in calendar[1:]:
        month = datetime.strptime(row[0], "%b %Y")
        for title, cell in zip(titles, row[1:-1], strict=True):
            shown[title][(month.year, month.month)] = [] if cell == "-" else [int(d) for d in cell.split(", ")]
        visits[(month.year, month.month)] = int(row[-1])
    all_days: set[date] = set()
    for title, detail in zip(titles, procedures, strict=True):
        expected: dict[tuple[int, int], list[int]] = defaultdict(list)
        for day in events(detail):
            expected[(day.year, day.month)].append(day.day)
            all_days.add(day)
        assert {k: v for k, v in shown[title].items() if v} == dict(expected), title
    per_month: dict[tuple[int, int], int] = defaultdict(int)
    for day in all_days:
        per_month[(day.year, day.month)] += 1
    assert {k: v for k, v in visits.items() if v} == dict(per_month)


@pytest.mark.parametrize("name", PLAN_NAMES)
def test_stated_breaks_are_real_gaps_in_the_schedule(plans, name):
    plan = plans[name]
    days = sorted({day for d in active(plan, "ServiceRequest") for day in events(d)})
    notes = [n["text"] for n in plan.get("note", [])]
    stated = [n for n in notes if n.startswith("Breaks between series")]
    assert not any("-day break" in n for n in notes), "no break length from configuration, only from the schedule"
    for first, last, length in re.findall(r"(\d{4}-\d\d-\d\d) to (\d{4}-\d\d-\d\d) \((\d+) days\)", " ".join(stated)):
        first_day, last_day = date.fromisoformat(first), date.fromisoformat(last)
        assert (last_day - first_day).days + 1 == int(length)
        assert not [d for d in days if first_day <= d <= last_day], "a session inside a stated break"
        assert first_day - timedelta(days=1) in days and last_day + timedelta(days=1) in days, "breaks end on sessions"


@pytest.mark.parametrize("name", PLAN_NAMES)
def test_home_care_is_mentioned_only_when_it_is_planned(plans, name):
    plan = plans[name]
    home = active(plan, "MedicationRequest")
    root = div(plan)
    continues = [n["text"] for n in plan.get("note", []) if n["text"].startswith("Home care continues")]
    assert bool(continues) == bool(home)
    at_home = section(root, "At home:")
    assert len(at_home) == len(home)
    for line, detail in zip(at_home, home, strict=True):
        bounds = detail["scheduledTiming"]["repeat"]["boundsPeriod"]
        assert f"every day from {bounds['start']} to {bounds['end']}" in line
        assert re.search(r"(once|twice|\d+ times) a day", line), "the dose rhythm"
        assert re.search(r"in the morning|in the evening|at bedtime|at night", line), "the time of day"


@pytest.mark.parametrize("name", PLAN_NAMES)
def test_every_exclusion_is_listed_with_every_reason(plans, name):
    plan = plans[name]
    left_out = " ".join(section(div(plan), "Left out:"))
    for detail in (a["detail"] for a in plan["activity"] if a["detail"].get("doNotPerform")):
        reason = detail["statusReason"]
        assert reason["text"] in left_out
        for coding in reason["coding"]:
            assert coding["display"].split()[0].lower() in reason["text"].lower() or coding["code"], coding


@pytest.mark.parametrize("name", PLAN_NAMES)
def test_no_sentence_claims_the_patient_was_told(plans, name):
    plan = plans[name]
    everything = plan["text"]["div"] + " ".join(n["text"] for n in plan.get("note", []))
    assert not re.search(r"has been (told|informed|warned)", everything)
    instructions = section(div(plan), "For the clinician:")
    communications = [d for d in (a["detail"] for a in plan["activity"]) if d["kind"] == "CommunicationRequest"]
    assert len(instructions) == len(communications)
    for detail in communications:
        assert detail["status"] == "not-started" and detail["scheduledPeriod"]["end"] == plan["period"]["start"]
        assert "tell the patient" in detail["description"]


@pytest.mark.parametrize("name", PLAN_NAMES)
def test_title_and_description_use_displays_never_codes(plans, name):
    plan = plans[name]
    for value in (plan["title"], plan["description"]):
        assert not re.search(r"\b[a-z]+-[a-z]+(-[a-z]+)*\b", value), value


def test_pregnant_and_breastfeeding_keeps_both_reasons(plans):
    plan = plans["pregnant-and-breastfeeding"]
    retinoid = [d for d in (a["detail"] for a in plan["activity"])
                if d.get("doNotPerform") and "Retinoic" in d.get("productReference", {}).get("display", "")]
    assert retinoid
    for detail in retinoid:
        codes = {c["code"] for c in detail["statusReason"]["coding"]}
        assert codes == {"contraindicated-pregnancy", "contraindicated-breastfeeding"}
        assert "pregnant" in detail["statusReason"]["text"] and "breastfeeding" in detail["statusReason"]["text"]
    left_out = " ".join(section(div(plan), "Left out:"))
    assert "pregnant" in left_out and "breastfeeding" in left_out


def left_out(plan: dict[str, Any], product: str) -> dict[str, Any]:
    return next(d for d in (a["detail"] for a in plan["activity"])
                if d.get("doNotPerform") and d.get("productReference", {}).get("reference") == product)


def test_a_procedure_without_preparations_keeps_why_each_preparation_went(plans):
    plan = plans["peel-preparation-allergy"]
    reason = left_out(plan, "Medication/aha-peel-solution")["statusReason"]
    assert {c["code"] for c in reason["coding"]} == {"no-remaining-preparation", "allergy"}
    assert "Alpha-hydroxy acids" in reason["text"]
    assert reason["text"] in " ".join(section(div(plan), "Left out:"))


def test_a_declined_modality_keeps_the_allergy_beside_it(plans):
    reason = left_out(plans["declined-and-allergic"], "Medication/nuclea-cream")["statusReason"]
    assert {c["code"] for c in reason["coding"]} == {"declined", "allergy"}
    assert reason["text"].index("declined") < reason["text"].index("allerg")


def test_a_hypotrophic_scar_on_the_shin_is_planned_with_a_warning(plans):
    plan = plans["hypotrophic-on-the-shin"]
    warnings = [n["text"] for n in plan["note"] if n["text"].startswith("Check the assessment:")]
    assert len(warnings) == 1 and "hypotrophic" in warnings[0]
    assert section(div(plan), "Check the assessment:")
    assert not any(n["text"].startswith("Check the assessment") for n in plans["hypotrophic-abdomen"]["note"])


@pytest.mark.parametrize("name", PLAN_NAMES)
def test_every_plan_is_valid_r4(plans, name, r4_validator):
    r4_validator.assert_valid(plans[name])


@pytest.mark.parametrize("name", PLAN_NAMES)
def test_kept_apart_sentences_hold_on_the_session_days(plans, name):
    plan = plans[name]
    days = {d["description"].split(". ")[0]: events(d) for d in active(plan, "ServiceRequest")}
    kept = [n["text"] for n in plan.get("note", []) if " kept apart from other procedures (" in n["text"]]
    assert set(kept) <= set(section(div(plan), "Kept apart:"))
    for sentence in kept:
        title, rest = sentence.split(" kept apart from other procedures (", 1)
        for part in rest.split("). ", 1)[0].split("; "):
            other, rule = part.rsplit(": ", 1)
            gap = int(rule.split()[2]) if rule.startswith("at least") else 1
            assert all(abs((a - b).days) >= gap for a in days[title] for b in days[other]), (title, other, gap)
