"""Building the FHIR R4 CarePlan from a plan draft and its schedule.

The plan carries what a clinician reading it in the EHR needs: the protocol it
instantiates, the assessment behind it, goals (contained Goal resources), one
activity per planned modality or home-care preparation with every session date in
`scheduledTiming.event`, the excluded activities and preparations with their reasons
(`doNotPerform` + `statusReason`), notes for the patient conversation, and a
generated narrative with the schedule as a table.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from html import escape
from typing import Any

from services.careplan.intake import Assessment
from services.careplan.knowledge import codings, versioned
from services.careplan.planning import PlanDraft, PlannedActivity, Preparation
from services.careplan.scheduling import Schedule

PLAN_IDENTIFIER_SYSTEM = "https://fhir.cicatrix.org/careplan-id"
SCAR_CARE_SYSTEM = "https://fhir.cicatrix.org/CodeSystem/scar-care"
_NAMESPACE = uuid.UUID("5b0d6f1e-5c3a-4f1e-9a57-6a1c1c7a1c00")
MAX_LISTED_DATES = 400


def plan_identifier(assessment_key: str, subject: str) -> str:
    """Stable per assessment and patient: the same assessment always yields the same plan identifier."""
    return str(uuid.uuid5(_NAMESPACE, f"{subject}\n{assessment_key}"))


def build_careplan(draft: PlanDraft, schedule: Schedule, assessment: Assessment, *, identifier: str,
                   status: str, start: date, end: date, created: datetime,
                   assessment_reference: str | None) -> dict[str, Any]:
    protocol = draft.protocol
    goals = [_goal(g, assessment.subject) for g in draft.goals]
    goal_refs = {g["id"]: {"reference": f"#{g['id']}"} for g in goals}
    activities: list[dict[str, Any]] = []
    for activity in draft.activities:
        activities.extend(_activities(activity, schedule, start, end, goal_refs))
    plan: dict[str, Any] = {
        "resourceType": "CarePlan",
        "contained": goals,
        "identifier": [{"system": PLAN_IDENTIFIER_SYSTEM, "value": identifier}],
        "instantiatesCanonical": [versioned(protocol.plan)],
        "status": status,
        "intent": "plan",
        "category": [{"coding": [{"system": SCAR_CARE_SYSTEM, "code": "scar-therapy-plan",
                                  "display": "Scar therapy plan"}]}],
        "title": _title(assessment),
        "description": _description(assessment),
        "subject": {"reference": assessment.subject},
        "period": {"start": start.isoformat(), "end": end.isoformat()},
        "created": created.isoformat(timespec="seconds"),
        "supportingInfo": [{"reference": assessment_reference}] if assessment_reference else [],
        "goal": list(goal_refs.values()),
        "activity": activities,
        "note": [{"text": text} for text in _notes(draft, schedule)],
    }
    plan["text"] = {"status": "generated", "div": narrative(plan, draft, schedule)}
    return {k: v for k, v in plan.items() if v not in ([], None, "")}


def _title(assessment: Assessment) -> str:
    scar = assessment.scar_type or {}
    return f"{scar.get('display') or scar.get('code', 'Scar')} treatment plan"


def _description(assessment: Assessment) -> str:
    scar = assessment.scar_type or {}
    site = assessment.body_site or {}
    where = (site.get("display") or site.get("code", "unspecified site")).lower()
    return f"{scar.get('display') or scar.get('code', 'Scar')}, {where}, about {assessment.one('scar-age-months')} " \
           "months old"


def _goal(goal: dict[str, Any], subject: str) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Goal", "id": f"goal-{goal.get('id', 'g')}",
                                "lifecycleStatus": "proposed", "description": goal["description"],
                                "subject": {"reference": subject}}
    if goal.get("category"):
        resource["category"] = [goal["category"]]
    if goal.get("addresses"):
        resource["note"] = [{"text": "Addresses: " + ", ".join(a.get("text", "") for a in goal["addresses"])}]
    return resource


def _activities(activity: PlannedActivity, schedule: Schedule, start: date, end: date,
                goal_refs: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    definition = activity.definition
    detail: dict[str, Any] = {
        "kind": definition.get("kind", "ServiceRequest"),
        "instantiatesCanonical": [versioned(definition)],
        "code": definition.get("code"),
        "goal": [goal_refs[f"goal-{g}"] for g in activity.goal_ids if f"goal-{g}" in goal_refs],
        "description": activity.title,
    }
    out: list[dict[str, Any]] = []
    if activity.exclusion is not None:
        detail |= {"status": "not-started", "doNotPerform": True,
                   "statusReason": activity.exclusion.concept(),
                   "description": f"{activity.title}: not planned. {activity.exclusion.text}"}
        _product(detail, activity.preparations)
        return [{"detail": _clean(detail)}]
    if activity.is_home_care:
        dosage = (definition.get("dosage") or [{}])[0]
        repeat = dict((dosage.get("timing") or {}).get("repeat") or {"frequency": 1, "period": 1, "periodUnit": "d"})
        repeat["boundsPeriod"] = {"start": start.isoformat(), "end": end.isoformat()}
        detail |= {"status": "not-started", "scheduledTiming": {"repeat": repeat},
                   "description": f"{activity.title}. {dosage.get('text', '')}".strip()}
        if repeat.get("periodUnit") == "d" and repeat.get("period", 1) == 1:
            detail["dailyAmount"] = {"value": repeat.get("frequency", 1), "unit": "application"}
    else:
        sessions = schedule.sessions.get(activity.key, [])
        rhythm = activity.rhythm
        repeat: dict[str, Any] = {"boundsPeriod": {"start": start.isoformat(), "end": end.isoformat()}}
        if rhythm is not None:
            period = int(rhythm.period) if float(rhythm.period).is_integer() else rhythm.period
            repeat |= {"frequency": rhythm.frequency, "period": period, "periodUnit": rhythm.period_unit}
        if sessions:
            repeat["count"] = len(sessions)
            detail |= {"status": "scheduled",
                       "scheduledTiming": {"event": [m.isoformat() for m in sessions[:MAX_LISTED_DATES]],
                                           "repeat": repeat}}
        else:  # the clinic calendar left no admissible day within the course: say so, do not hide it
            detail |= {"status": "not-started", "scheduledTiming": {"repeat": repeat},
                       "statusReason": {"text": "Deferred: no series of the course could hold it within "
                                                f"{schedule.max_visits_per_week} visits a week (clinic days, "
                                                "holidays, closures, daily cap, days kept free around "
                                                "incompatible procedures); schedule it by hand"}}
    _product(detail, activity.usable_preparations)
    out.append({"detail": _clean(detail)})
    for preparation in activity.preparations:
        if preparation.exclusion is not None:
            out.append({"detail": _clean({
                "kind": "MedicationRequest", "status": "not-started", "doNotPerform": True,
                "statusReason": preparation.exclusion.concept(),
                "productReference": {"reference": preparation.reference, "display": preparation.name},
                "description": f"Do not use {preparation.name} ({activity.title}). {preparation.exclusion.text}",
            })})
    return out


def _product(detail: dict[str, Any], preparations: list[Preparation]) -> None:
    """product[x] holds one preparation; several are named in the description (R4 allows one product)."""
    if len(preparations) == 1:
        detail["productReference"] = {"reference": preparations[0].reference, "display": preparations[0].name}
    elif preparations:
        names = ", ".join(p.name for p in preparations)
        detail["productCodeableConcept"] = {"text": f"One of: {names}"}
        detail["description"] = f"{detail.get('description', '').rstrip('.')}. Preparations: {names}."


def _clean(detail: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in detail.items() if v not in (None, [], "")}


def _notes(draft: PlanDraft, schedule: Schedule) -> list[str]:
    notes = list(dict.fromkeys(draft.notes))
    notes.extend(series_notes(draft, schedule))
    notes.extend(kept_apart_notes(draft, schedule))
    in_clinic = any(a.rhythm and not a.is_home_care and a.exclusion is None for a in draft.activities)
    if draft.course and draft.course.break_days and in_clinic:
        notes.append(f"In-clinic procedures are repeated in series with a {draft.course.break_days}-day break "
                     "between series for the whole course; home care continues every day.")
    if draft.alternatives:
        notes.append("Alternatives the clinician may choose instead: " + "; ".join(draft.alternatives) + ".")
    if draft.alternatives_left_out:
        notes.append("Not offered as alternatives: " + "; ".join(
            f"{left.title} ({left.exclusion.text.rstrip('.')})" for left in draft.alternatives_left_out) + ".")
    return notes


def series_notes(draft: PlanDraft, schedule: Schedule) -> list[str]:
    """Per procedure: the series it runs in, the real breaks between them, and the series it waited for."""
    if len(schedule.series) < 2 and not any(s.deferred for s in schedule.series) and not schedule.left_over:
        return []
    notes = []
    for activity in draft.planned():
        if activity.key not in schedule.sessions:
            continue
        numbers = [s.number for s in schedule.series if s.days.get(activity.key)]
        text = f"{activity.title}: series {_numbers(numbers)} of {len(schedule.series)}" if numbers else \
            f"{activity.title}: in no series"
        breaks = schedule.breaks(activity.key)
        if breaks:
            text += f", {min(breaks)} to {max(breaks)} days between series" if min(breaks) != max(breaks) else \
                f", {breaks[0]} days between series"
        deferred = schedule.deferrals(activity.key)
        if deferred:
            text += (f"; deferred in series {_numbers(deferred)} because the weekly budget of "
                     f"{schedule.max_visits_per_week} visits could not also hold it (higher-ranked procedures first, "
                     "deferred ones first in the next series)")
        if activity.key in schedule.left_over:
            text += "; the course left no room for a further series that could hold it"
        notes.append(text + ".")
    return notes


def kept_apart_notes(draft: PlanDraft, schedule: Schedule) -> list[str]:
    """The incompatibility rules that shaped this schedule, with their reason (clinic defaults say so)."""
    by_key = {a.key: a for a in draft.planned()}
    rules: dict[str, list[tuple[str, int]]] = {}
    for (key, other), gap in schedule.kept_apart.items():
        first, second = by_key[key], by_key[other]
        governing, partner = (first, second) if first.apart_days >= second.apart_days else (second, first)
        rules.setdefault(governing.key, []).append((partner.title, gap))
    notes = []
    for key, partners in rules.items():
        activity = by_key[key]
        names = "; ".join(f"{title}: at least {gap} days apart" if gap > 1 else f"{title}: not on the same day"
                          for title, gap in partners)
        notes.append(f"{activity.title} kept apart from other procedures ({names}). {activity.apart_reason}".strip())
    return notes


def _numbers(numbers: list[int]) -> str:
    return ", ".join(str(n) for n in numbers[:-1]) + (" and " if len(numbers) > 1 else "") + str(numbers[-1])


# ------------------------------------------------------------------ narrative

UNIT_NAMES = {"d": "day", "wk": "week", "mo": "month", "a": "year", "h": "hour"}


def rhythm_text(frequency: int, period: float, unit: str) -> str:
    """'2 a week', '1 every 2 weeks': how clinicians say it."""
    name = UNIT_NAMES.get(unit, unit)
    return f"{frequency} a {name}" if period == 1 else f"{frequency} every {period:g} {name}s"



def narrative(plan: dict[str, Any], draft: PlanDraft, schedule: Schedule) -> str:
    """The plan as XHTML a clinician can read in the EHR: what, how often, which dates, what was left out."""
    rows = []
    for activity in draft.activities:
        if activity.exclusion is not None:
            continue
        if activity.is_home_care:
            dosage = (activity.definition.get("dosage") or [{}])[0].get("text", "daily")
            when, dates = escape(dosage), "every day for the whole course"
        else:
            sessions = schedule.sessions.get(activity.key, [])
            rhythm = activity.rhythm
            when = escape(f"{rhythm_text(rhythm.frequency, rhythm.period, rhythm.period_unit)}, "
                          f"{len(sessions)} sessions" if rhythm else f"{len(sessions)} sessions")
            dates = escape(", ".join(m.strftime("%Y-%m-%d") for m in sessions)) or "none"
        preparations = escape(", ".join(p.name for p in activity.usable_preparations)) or "-"
        rows.append(f"<tr><td>{escape(activity.title)}</td><td>{when}</td><td>{dates}</td>"
                    f"<td>{preparations}</td></tr>")
    excluded = []
    for activity in draft.activities:
        if activity.exclusion is not None:
            excluded.append(f"<li>{escape(activity.title)}: {escape(activity.exclusion.text)}</li>")
        for preparation in activity.preparations:
            if preparation.exclusion is not None and activity.exclusion is None:
                excluded.append(f"<li>{escape(preparation.name)} ({escape(activity.title)}): "
                                f"{escape(preparation.exclusion.text)}</li>")
    goals = "".join(f"<li>{escape(g['description'].get('text', ''))}</li>" for g in draft.goals)
    notes = "".join(f"<li>{escape(n['text'])}</li>" for n in plan.get("note", []))
    parts = [
        '<div xmlns="http://www.w3.org/1999/xhtml">',
        f"<p><b>{escape(plan['title'])}</b>, "
        f"{escape(plan['period']['start'])} to {escape(plan['period']['end'])}. {escape(plan['description'])}.</p>",
        f"<p>Goals:</p><ul>{goals}</ul>" if goals else "",
        "<table><thead><tr><th>What</th><th>How often</th><th>Dates</th><th>Preparations</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>",
        f"<p>Left out:</p><ul>{''.join(excluded)}</ul>" if excluded else "",
        f"<p>Notes:</p><ul>{notes}</ul>" if notes else "",
        "</div>",
    ]
    return "".join(parts)


def scar_codings(assessment: Assessment) -> list[dict[str, Any]]:
    return codings({"coding": [assessment.scar_type]}) if assessment.scar_type else []
