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
- A procedure closer to a scheduled session of the active plan than the catalog
  allows gets a `warning` naming that session and the catalog's reason: for
  procedures incompatible either way round (`not-same-day-as`), the larger of the
  two `not-same-day-gap`s, at least not the same day; for the same modality, its
  `minimum-interval`.
- Data the rules needed but that could not be had is named on an `info` card.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from services.careplan.assessment_limits import AssessmentLimits
from services.careplan.cds.cards import SEVERITY_INDICATOR, Indicator, card, delete_action, suggestion, unchecked_card
from services.careplan.cds.discovery import PREFETCH_NAMES
from services.careplan.cds.hooks import HookCall
from services.careplan.cds.patient import Status, latest_assessment, screening_assessment, status_answer
from services.careplan.cds.plans import Session, scheduled_sessions
from services.careplan.cds.prefetch import Prefetched
from services.careplan.knowledge import (
    MINIMUM_INTERVAL,
    NOT_SAME_DAY_AS,
    NOT_SAME_DAY_GAP,
    NOT_SAME_DAY_REASON,
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
                       questionnaire: str, timezone: str, limits: AssessmentLimits) -> list[dict[str, Any]]:
    """The cards for the draft orders of one call (CPU work: run it in the work pool).

    The EHR's allergies are capped like an assessment's (CAREPLAN_MAX_ALLERGIES): a longer list is refused
    rather than screened in part, since a card that stayed silent would read as 'no allergy found'."""
    status = Status(status_answer(data.of("pregnancy"), "pregnant"),
                    status_answer(data.of("breastfeeding"), "breastfeeding"))
    assessment = screening_assessment(latest_assessment(data.of("assessment"), questionnaire), status,
                                      call.patient_reference)
    allergies = assessment.allergies([a for a in data.of("allergies") if a.get("resourceType") == "AllergyIntolerance"])
    limits.check_allergies(allergies)
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
            clashes = sorted(((s, why) for s in sessions if (why := _clash(definition, s, day, formulary))),
                             key=lambda found: (abs((found[0].moment.date() - day).days), found[0].moment))
            if clashes:
                cards.append(_clash_card(name, day, clashes, reference))
    unchecked = [PREFETCH_NAMES[key] for key in sorted(needed) if not data.checked(key)]
    if unchecked:
        cards.append(unchecked_card(unchecked))
    return cards


# ------------------------------------------------------------------ matching orders to catalog content


def _concept(order: dict[str, Any]) -> dict[str, Any]:
    concept: dict[str, Any] = (order.get("code") if order["resourceType"] == "ServiceRequest"
                               else order.get("medicationCodeableConcept")) or {}
    if concept or order["resourceType"] == "ServiceRequest":
        return concept
    reference = (order.get("medicationReference") or {})
    target = reference.get("reference", "")
    if target.startswith("#"):
        contained: dict[str, Any] = next((r for r in order.get("contained", []) if f"#{r.get('id')}" == target), {})
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
    name: str = concept.get("text") or next((c["display"] for c in codings(concept) if c.get("display")), fallback)
    return name


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


def _clash(definition: dict[str, Any], session: Session, day: date, formulary: Protocol) -> str | None:
    """Why the ordered procedure on `day` may not come this close to `session` (None when it may).

    The same modality keeps its `minimum-interval`. Procedures incompatible either way round (`not-same-day-as`)
    keep the larger of the two definitions' `not-same-day-gap`s, at least not the same day — the scheduler's rule
    for such a pair; the catalog's `not-same-day-reason` says why."""
    apart = abs((session.moment.date() - day).days)
    if definition.get("url") == canonical_url(session.canonical):
        interval = _days(definition, MINIMUM_INTERVAL)
        return f"at least {interval} days between two sessions" if interval and apart < interval else None
    scheduled = formulary.activity(session.canonical) or {}
    if not ({session.canonical, canonical_url(session.canonical)} & _not_same_day(definition)
            or {versioned(definition), definition.get("url", "")} & _not_same_day(scheduled)):
        return None
    gap = max(_days(definition, NOT_SAME_DAY_GAP), _days(scheduled, NOT_SAME_DAY_GAP), 1)
    if apart >= gap:
        return None
    reason = next((v for d in (definition, scheduled) for v in extensions(d, NOT_SAME_DAY_REASON)
                   if isinstance(v, str)), "")
    return (f"at least {gap} days apart" if gap > 1 else "not on the same day") + (f": {reason}" if reason else "")


def _not_same_day(definition: dict[str, Any]) -> set[str]:
    return {v for v in extensions(definition, NOT_SAME_DAY_AS) if isinstance(v, str)}


def _days(definition: dict[str, Any], url: str) -> int:
    return max([duration_days(v) for v in extensions(definition, url) if isinstance(v, dict)] or [0])


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


def _clash_card(name: str, day: date, clashes: list[tuple[Session, str]], reference: str) -> dict[str, Any]:
    """Names the closest clashing session in the summary; the detail lists every one with the catalog's reason."""
    closest = clashes[0][0]
    listed = "\n".join(f"- {s.name}, {s.moment:%a %d %b %Y, %H:%M} ({why})" for s, why in clashes)
    return card(f"{name} on {day:%d %b %Y} clashes with the {closest.name} session of {closest.moment:%d %b %Y}",
                "warning",
                detail=f"The catalog keeps {name} on {day:%d %b %Y} away from these sessions of the active scar "
                       f"treatment plan:\n\n{listed}\n\nMove the order to another day, or remove it.",
                suggestions=[suggestion(f"Remove the order for {name}",
                                        delete_action(f"Remove the order for {name}", reference))],
                override=True)
