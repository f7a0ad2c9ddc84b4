"""The example assessments produce the plans in contracts/fhir/examples, and those plans match the seed."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest

from services.careplan.examples import EXAMPLES_DIR, generate_all, render

pytestmark = pytest.mark.xdist_group("examples")


@pytest.fixture(scope="module")
def generated() -> dict[str, tuple[str, dict[str, Any]]]:
    return asyncio.run(generate_all())


def example_names() -> list[str]:
    return sorted(p.name.removesuffix(".parameters.json") for p in EXAMPLES_DIR.glob("*.parameters.json"))


def details(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for activity in plan.get("activity", []):
        yield activity["detail"]


def planned_codes(plan: dict[str, Any]) -> set[str]:
    return {c["code"] for d in details(plan) if not d.get("doNotPerform") for c in d.get("code", {}).get("coding", [])}


def excluded(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in details(plan) if d.get("doNotPerform")]


def test_there_are_at_least_eight_examples():
    assert len(example_names()) >= 8


@pytest.mark.parametrize("name", example_names())
def test_example_output_is_up_to_date(generated, name):
    kind, resource = generated[name]
    stored = EXAMPLES_DIR / f"{name}.{kind}.json"
    assert stored.exists(), f"run `cicatrix examples` to write {stored.name}"
    assert stored.read_text() == render(resource), f"{stored.name} is stale: run `cicatrix examples`"


@pytest.mark.parametrize("name", example_names())
def test_example_output_is_valid_r4(generated, name, r4_validator):
    r4_validator.assert_valid(generated[name][1])


def test_atrophic_scar_gets_the_optimal_set(generated):
    kind, plan = generated["atrophic-chest-visible-vessels"]
    assert kind == "careplan"
    assert {"aha-peel", "vacuum-massage", "mesotherapy", "electrophoresis", "phonophoresis",
            "home-topical-application"} <= planned_codes(plan)
    assert plan["instantiatesCanonical"] == ["https://fhir.cicatrix.org/PlanDefinition/atrophic-scar-protocol|1.0.0"]
    goals = {g["description"]["coding"][0]["code"] for g in plan["contained"] if g["resourceType"] == "Goal"}
    assert goals == {"smooth", "thicken"}
    for detail in details(plan):
        if detail["kind"] == "ServiceRequest" and not detail.get("doNotPerform"):
            assert detail["scheduledTiming"]["event"], detail["description"]
    assert not any(d["kind"] == "CommunicationRequest" for d in details(plan)), "vessels are visible: no warning"


def test_old_scar_without_vessels_gets_the_long_course_and_the_warning(generated):
    _, plan = generated["atrophic-shin-old-no-vessels"]
    start, end = plan["period"]["start"], plan["period"]["end"]
    assert (start, end) == ("2026-03-02", "2027-09-02"), "1 to 1.5 years: the plan spans 18 months"
    warning = [d for d in details(plan) if d["kind"] == "CommunicationRequest"]
    assert len(warning) == 1 and "barely" in warning[0]["description"], "telling the patient is on the plan, to do"
    assert warning[0]["status"] == "not-started"
    goals = {g["description"]["coding"][0]["code"] for g in plan["contained"] if g["resourceType"] == "Goal"}
    assert goals == {"smooth", "thicken"}, "the source asks for thickening on every atrophic scar: they are thin"
    for detail in details(plan):
        if not detail.get("doNotPerform") and detail["kind"] != "CommunicationRequest":
            assert detail["goal"], f"{detail['description']} serves a goal of the plan"
    vacuum = next(d for d in details(plan) if d["code"]["coding"][0]["code"] == "vacuum-massage")
    events = vacuum["scheduledTiming"]["event"]
    assert events[0].startswith("2026-03") and events[-1].startswith("2027-"), "courses repeat over the year"


def test_pregnancy_excludes_retinoids_with_the_reason(generated):
    _, plan = generated["atrophic-pregnant"]
    left_out = excluded(plan)
    assert any("Retinoic acid" in d.get("productReference", {}).get("display", "") for d in left_out)
    assert all(d["statusReason"]["text"] for d in left_out)
    assert "retinoic" not in json.dumps([d for d in details(plan) if not d.get("doNotPerform")]).lower()


def test_onion_extract_allergy_excludes_mederma(generated):
    _, plan = generated["atrophic-allergy-onion-extract"]
    assert any("Mederma" in d.get("productReference", {}).get("display", "") or "Mederma" in d["description"]
               for d in excluded(plan))


def test_free_text_camphor_allergy_excludes_kapilar(generated):
    _, plan = generated["atrophic-allergy-camphor"]
    names = " ".join(d["description"] for d in excluded(plan))
    assert "Kapilar" in names and "Camphor" in names


def test_declined_mesotherapy_is_left_out_and_visible(generated):
    _, plan = generated["atrophic-declined-injections"]
    assert "mesotherapy" not in planned_codes(plan)
    meso = [d for d in excluded(plan) if d.get("code", {}).get("coding", [{}])[0].get("code") == "mesotherapy"]
    assert meso and meso[0]["statusReason"]["coding"][0]["code"] == "declined"


@pytest.mark.parametrize("name,protocol", [("hypotrophic-abdomen", "hypotrophic-scar-protocol"),
                                           ("striae-thigh", "striae-protocol")])
def test_hypotrophic_scars_and_striae_get_their_protocols(generated, name, protocol):
    kind, plan = generated[name]
    assert kind == "careplan"
    assert plan["instantiatesCanonical"][0].startswith(f"https://fhir.cicatrix.org/PlanDefinition/{protocol}|")
    assert any(d["kind"] == "MedicationRequest" and not d.get("doNotPerform") for d in details(plan))


def test_unsupported_scar_type_is_refused_with_the_reason(generated):
    kind, outcome = generated["keloid-unsupported"]
    assert kind == "outcome"
    assert "no treatment protocol" in outcome["issue"][0]["diagnostics"]


def test_narrative_is_a_readable_schedule(generated):
    _, plan = generated["atrophic-pregnant"]
    div = plan["text"]["div"]
    assert plan["text"]["status"] == "generated"
    assert div.startswith('<div xmlns="http://www.w3.org/1999/xhtml">')
    assert "<table>" in div and "Left out" in div and "2026-03-02" in div


def alternatives_note(plan: dict) -> str:
    return next(n["text"] for n in plan["note"] if n["text"].startswith("Alternatives"))


@pytest.mark.parametrize("name,never_offered", [
    ("atrophic-declined-injections", ["Mesotherapy"]),
    ("atrophic-pregnant", ["Retinoic acid"]),
    ("atrophic-allergy-camphor", ["Kapilar"]),
    ("atrophic-allergy-onion-extract", ["Mederma"]),
])
def test_alternatives_pass_the_same_screening(generated, name, never_offered):
    _, plan = generated[name]
    offered = [alternatives_note(plan)] + [d["description"] for d in details(plan) if not d.get("doNotPerform")]
    for word in never_offered:
        assert not any(word in text for text in offered), f"{word} is excluded for this patient"


def test_the_long_course_books_no_public_holiday_and_at_most_three_visits_a_week(generated):
    _, plan = generated["atrophic-shin-old-no-vessels"]
    days = [e[:10] for d in details(plan) for e in d.get("scheduledTiming", {}).get("event", [])]
    assert not {"2026-04-03", "2026-04-06", "2026-05-14", "2027-01-01", "2027-05-06"} & set(days)
    weeks = Counter(date.fromisoformat(day).isocalendar()[:2] for day in set(days))
    assert max(weeks.values()) <= 3
    assert any("deferred in series" in n["text"] for n in plan["note"]), "what waited for a later series is said"
