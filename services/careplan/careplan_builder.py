"""Building the FHIR R4 CarePlan from a plan draft and its schedule.

The plan carries what a clinician reading it in the EHR needs: the protocol it
instantiates, the assessment behind it, goals (contained Goal resources), one
activity per planned modality or home-care preparation with every session date in
`scheduledTiming.event`, the excluded activities and preparations with their reasons
(`doNotPerform` + `statusReason`), what the clinician tells the patient before
treatment (an activity of kind CommunicationRequest), notes, and the generated
narrative (narrative.py).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from services.careplan.intake import Assessment
from services.careplan.knowledge import versioned
from services.careplan.narrative import clinic_breaks, home_care_sentence, narrative, series_sentence
from services.careplan.planning import Communication, PlanDraft, PlannedActivity, Preparation
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
                   assessment_reference: str | None, warnings: list[str] | None = None) -> dict[str, Any]:
    """The CarePlan; `warnings` are the assessment's plausibility warnings, shown first in note and narrative."""
    protocol = draft.protocol
    warnings = warnings or []
    goals = [_goal(g, assessment.subject) for g in draft.goals]
    goal_refs = {g["id"]: {"reference": f"#{g['id']}"} for g in goals}
    activities: list[dict[str, Any]] = [_communication(c, start) for c in draft.communications]
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
    }
    notes = _notes(draft, schedule, end)
    choices = _choices(draft)
    plan["note"] = [{"text": text} for text in [f"Check the assessment: {w}" for w in warnings]
                    + [text for texts in notes.values() for text in texts]
                    + [f"{heading}: {'; '.join(items)}." for heading, items in choices.items() if items]]
    plan["text"] = {"status": "generated", "div": narrative(plan, draft, schedule, start=start, end=end,
                                                            warnings=warnings, notes=notes | choices)}
    return {k: v for k, v in plan.items() if v not in ([], None, "")}


def _title(assessment: Assessment) -> str:
    """'Atrophic scar treatment plan, anterior surface of the shin': the catalog's displays (intake puts them on the
    answers), so a plan list in the EHR tells one site's plan from another's and never shows a raw code."""
    return f"{_scar(assessment)} treatment plan, {_site(assessment)}"


def _description(assessment: Assessment) -> str:
    return f"{_scar(assessment)}, {_site(assessment)}, about {assessment.one('scar-age-months')} months old"


def _scar(assessment: Assessment) -> str:
    return (assessment.scar_type or {}).get("display") or "Scar"


def _site(assessment: Assessment) -> str:
    display = (assessment.body_site or {}).get("display")
    return display[:1].lower() + display[1:] if display else "site not named"


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
        repeat: dict[str, Any] = dict((dosage.get("timing") or {}).get("repeat")
                                      or {"frequency": 1, "period": 1, "periodUnit": "d"})
        repeat["boundsPeriod"] = {"start": start.isoformat(), "end": end.isoformat()}
        detail |= {"status": "not-started", "scheduledTiming": {"repeat": repeat},
                   "description": f"{activity.title}. {dosage.get('text', '')}".strip()}
        if repeat.get("periodUnit") == "d" and repeat.get("period", 1) == 1:
            detail["dailyAmount"] = {"value": repeat.get("frequency", 1), "unit": "application"}
    else:
        sessions = schedule.sessions.get(activity.key, [])
        rhythm = activity.rhythm
        repeat = {"boundsPeriod": {"start": start.isoformat(), "end": end.isoformat()}}
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


def _communication(communication: Communication, start: date) -> dict[str, Any]:
    """What the clinician tells the patient, due before the first session: an instruction, not a record of it."""
    return {"detail": _clean({
        "kind": "CommunicationRequest", "instantiatesCanonical": [versioned(communication.definition)],
        "code": communication.definition.get("code"), "status": "not-started",
        "scheduledPeriod": {"end": start.isoformat()},
        "description": f"{communication.title}. {communication.text}"})}


def _notes(draft: PlanDraft, schedule: Schedule, end: date) -> dict[str, list[str]]:
    """The plan's notes by the heading the narrative shows them under: course notes from the protocol, then
    sentences derived from this plan's own schedule and activities."""
    breaks = clinic_breaks(schedule, draft.course.break_days if draft.course else 0)
    course = list(dict.fromkeys(draft.notes))
    if breaks:
        course.append(series_sentence(breaks))
    if any(a.is_home_care and a.exclusion is None for a in draft.activities):
        course.append(home_care_sentence(end, breaks))
    return {"Course": course, "Series and weekly budget": series_notes(draft, schedule),
            "Kept apart": kept_apart_notes(draft, schedule)}


def _choices(draft: PlanDraft) -> dict[str, list[str]]:
    """The alternatives offered and those screening removed: one note each, one list item per option."""
    return {"Alternatives the clinician may choose instead": list(draft.alternatives),
            "Not offered as alternatives": [f"{left.title} ({left.exclusion.text.rstrip('.')})"
                                            for left in draft.alternatives_left_out]}


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
                     "deferred ones first in the next series, the longest-waiting first)")
        if activity.key in schedule.left_over:
            text += "; the course left no room for a further series that could hold it"
        notes.append(text + ".")
    return notes


def kept_apart_notes(draft: PlanDraft, schedule: Schedule) -> list[str]:
    """The incompatibility rules that shaped this schedule, with their reason (clinic defaults say so)."""
    by_key = {a.key: a for a in draft.planned()}
    order = {key: i for i, key in enumerate(by_key)}  # protocol order: the same plan always reads the same
    rules: dict[str, list[tuple[str, int]]] = {}
    for (key, other), gap in sorted(schedule.kept_apart.items(), key=lambda kept: (order[kept[0][0]],
                                                                                   order[kept[0][1]])):
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
