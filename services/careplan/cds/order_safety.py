"""`scar-order-safety` on `order-sign` / `order-select`: the catalog's screening rules on orders written by hand.

Each draft MedicationRequest is matched to catalog preparations, each draft
ServiceRequest to a catalog modality (by code, or by name), and screened by the
same code that screens planned activities (`planning.screen_order`) over the
patient's latest assessment and status Observations (`patient.py`). Nothing
here decides what is contraindicated: the rules and their reasons are content.

- An excluded preparation gets a card whose indicator follows the severity of
  the preparation's own contraindication (MedicationKnowledge.contraindication:
  high -> `critical`), `warning` otherwise (allergy, declined modality); each card
  suggests deleting the order and offers override reasons.
- A procedure that the catalog says must not share a day with a scheduled session
  of the active plan (`not-same-day-as`, either way round), or that comes sooner
  than its own `minimum-interval` after a scheduled session of the same modality,
  gets a `warning` naming that session.
- Data the rules needed but that could not be had is named on an `info` card.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from services.careplan.cds.cards import SEVERITY_INDICATOR, Indicator, card, delete_action, suggestion, unchecked_card
from services.careplan.cds.discovery import PREFETCH_NAMES
from services.careplan.cds.hooks import HookCall
from services.careplan.cds.patient import Status, latest_assessment, screening_assessment, status_answer
from services.careplan.cds.plans import Session, scheduled_sessions
from services.careplan.cds.prefetch import Prefetched
from services.careplan.knowledge import (
    MINIMUM_INTERVAL,
    NOT_SAME_DAY_AS,
    ExpressionCache,
    Protocol,
    canonical_url,
    codings,
    duration_days,
    extensions,
    versioned,
)
from services.careplan.planning import Exclusion, screen_order
from services.fhir.searchparams import normalise

MEDICATION_KEYS = ("assessment", "allergies", "pregnancy", "breastfeeding")
PROCEDURE_KEYS = ("assessment", "carePlans")


def order_safety_cards(call: HookCall, data: Prefetched, formulary: Protocol, expressions: ExpressionCache,
                       questionnaire: str, timezone: str) -> list[dict[str, Any]]:
    """The cards for the draft orders of one call (CPU work: run it in a worker thread)."""
    status = Status(status_answer(data.of("pregnancy"), "pregnant"),
                    status_answer(data.of("breastfeeding"), "breastfeeding"))
    assessment = screening_assessment(latest_assessment(data.of("assessment"), questionnaire), status,
                                      call.patient_reference)
    allergies = assessment.allergies([a for a in data.of("allergies") if a.get("resourceType") == "AllergyIntolerance"])
    sessions = [s for s in scheduled_sessions(data.of("carePlans")) if s.canonical]
    cards: list[dict[str, Any]] = []
    needed: set[str] = set()
    for order in call.draft_orders():
        reference = f"{order['resourceType']}/{order.get('id', '')}"
        if order["resourceType"] == "MedicationRequest":
            preparations = _preparations(order, formulary)
            if not preparations:
                continue
            needed.update(MEDICATION_KEYS)
            screened = screen_order(formulary, assessment, allergies, expressions,
                                    {"kind": "MedicationRequest", "id": "order"}, preparations)
            for preparation in screened.preparations:
                if preparation.exclusion is not None:
                    cards.append(_exclusion_card(_order_name(order, preparation.name), preparation.exclusion,
                                                 formulary.contraindications.get(preparation.reference, []),
                                                 reference))
        else:
            definition = _modality(order, formulary)
            if definition is None:
                continue
            needed.update(PROCEDURE_KEYS)
            screened = screen_order(formulary, assessment, allergies, expressions, definition, [])
            name = _order_name(order, definition.get("title", ""))
            if screened.exclusion is not None:
                cards.append(_exclusion_card(name, screened.exclusion, [], reference))
            day = _order_day(order, timezone)
            clashes = sorted((s for s in sessions if _clashes(definition, s, day, formulary)),
                             key=lambda s: (abs((s.moment.date() - day).days), s.moment))
            if clashes:
                cards.append(_clash_card(name, day, clashes, reference))
    unchecked = [PREFETCH_NAMES[key] for key in sorted(needed) if not data.checked(key)]
    if unchecked:
        cards.append(unchecked_card(unchecked))
    return cards


# ------------------------------------------------------------------ matching orders to catalog content


def _concept(order: dict[str, Any]) -> dict[str, Any]:
    if order["resourceType"] == "ServiceRequest":
        return order.get("code") or {}
    if order.get("medicationCodeableConcept"):
        return order["medicationCodeableConcept"]
    reference = (order.get("medicationReference") or {})
    target = reference.get("reference", "")
    if target.startswith("#"):
        contained = next((r for r in order.get("contained", []) if f"#{r.get('id')}" == target), {})
        return contained.get("code") or {"text": reference.get("display", "")}
    return {"text": reference.get("display", "")}


def _keys(concept: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c.get("system", ""), c.get("code", "")) for c in codings(concept) if c.get("code")}


def _names(concept: dict[str, Any]) -> set[str]:
    return {normalise(t) for t in [concept.get("text", "")] + [c.get("display", "") for c in codings(concept)] if t}


def _named(ordered: set[str], known: set[str]) -> bool:
    """An ordered name matches a catalog name when one contains the other as whole words."""
    return any(f" {k} " in f" {o} " or f" {o} " in f" {k} " for o in ordered for k in known if o and k)


def _preparations(order: dict[str, Any], formulary: Protocol) -> list[str]:
    concept = _concept(order)
    keys, names = _keys(concept), _names(concept)
    return [ref for ref, medication in formulary.medications.items()
            if keys & _keys(medication.get("code") or {}) or _named(names, _names(medication.get("code") or {}))]


def _modality(order: dict[str, Any], formulary: Protocol) -> dict[str, Any] | None:
    concept = _concept(order)
    keys, names = _keys(concept), _names(concept)
    for definition in {id(d): d for d in formulary.activities.values()}.values():
        if definition.get("kind") == "MedicationRequest":
            continue
        code = definition.get("code") or {}
        if keys & _keys(code) or _named(names, _names(code) | {normalise(definition.get("title", ""))}):
            return definition
    return None


def _order_name(order: dict[str, Any], fallback: str) -> str:
    concept = _concept(order)
    return concept.get("text") or next((c.get("display") for c in codings(concept) if c.get("display")), fallback)


# ------------------------------------------------------------------ sessions of the active plan


def _order_day(order: dict[str, Any], timezone: str) -> date:
    """When the ordered procedure is to happen: occurrence[x], else the day it is ordered (the clinic's today)."""
    period = order.get("occurrencePeriod") or {}
    timing = (order.get("occurrenceTiming") or {}).get("event") or []
    for value in (order.get("occurrenceDateTime"), period.get("start"), *timing[:1]):
        if isinstance(value, str) and len(value) >= 10:
            try:
                return date.fromisoformat(value[:10])
            except ValueError:
                continue
    return datetime.now(ZoneInfo(timezone)).date()


def _clashes(definition: dict[str, Any], session: Session, day: date, formulary: Protocol) -> bool:
    scheduled = formulary.activity(session.canonical) or {}
    names = {versioned(definition), definition.get("url", "")}
    other = {session.canonical, canonical_url(session.canonical)}
    same_modality = definition.get("url") == canonical_url(session.canonical)
    apart = abs((session.moment.date() - day).days)
    if same_modality:
        intervals = extensions(definition, MINIMUM_INTERVAL)
        return bool(intervals) and apart < duration_days(intervals[0])
    not_same_day = {v for v in extensions(definition, NOT_SAME_DAY_AS) if isinstance(v, str)}
    theirs = {v for v in extensions(scheduled, NOT_SAME_DAY_AS) if isinstance(v, str)}
    return apart == 0 and bool(not_same_day & other or theirs & names)


# ------------------------------------------------------------------ cards


def _exclusion_card(name: str, exclusion: Exclusion, issues: list[dict[str, Any]], reference: str) -> dict[str, Any]:
    reason_codes = {(c.get("system", ""), c.get("code", "")) for c in codings(exclusion.reason)}
    issue = next((i for i in issues if _keys(i.get("code") or {}) & reason_codes), None)
    indicator: Indicator = SEVERITY_INDICATOR.get((issue or {}).get("severity", ""), "warning")
    reason = exclusion.reason.get("text") or next((c.get("display") for c in codings(exclusion.reason)), "")
    detail = (issue or {}).get("detail") or exclusion.text
    return card(f"{name}: {reason}", indicator, detail=f"**{reason}.** {detail}",
                suggestions=[suggestion(f"Remove the order for {name}",
                                        delete_action(f"Remove the order for {name}", reference))],
                override=True)


def _clash_card(name: str, day: date, clashes: list[Session], reference: str) -> dict[str, Any]:
    """Names the closest clashing session in the summary and every clashing session in the detail."""
    closest = clashes[0]
    listed = "\n".join(f"- {s.name}: {s.moment:%a %d %b %Y, %H:%M}" for s in clashes)
    return card(f"{name} on {day:%d %b %Y} clashes with the {closest.name} session of {closest.moment:%d %b %Y}",
                "warning",
                detail=f"The catalog does not allow {name} on {day:%d %b %Y} this close to these sessions of the "
                       f"active scar treatment plan:\n\n{listed}\n\nMove the order to another day, or remove it.",
                suggestions=[suggestion(f"Remove the order for {name}",
                                        delete_action(f"Remove the order for {name}", reference))],
                override=True)
