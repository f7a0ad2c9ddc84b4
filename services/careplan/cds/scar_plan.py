"""`scar-plan` on `patient-view`: the patient's scar plan where the clinician already is, in the chart.

- An active Cicatrix plan: one `info` card with its next sessions.
- A completed scar assessment and no active plan: one `info` card whose summary
  states the plan in one line, with one suggestion — `create` the CarePlan that
  `PlanDefinition/$apply` produces for that assessment, as a draft. Pregnancy and
  breastfeeding Observations newer than the assessment's answers take part in its
  screening, and so do the patient's AllergyIntolerances.
- Nothing of the two, or a scar type the catalog has no protocol for: no card.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from services.careplan.cds.cards import card, create_action, suggestion, unchecked_card
from services.careplan.cds.discovery import PREFETCH_NAMES
from services.careplan.cds.hooks import HookCall
from services.careplan.cds.patient import Status, latest_assessment, status_answer, with_status
from services.careplan.cds.plans import activity_name, is_cicatrix_plan, scheduled_sessions
from services.careplan.cds.prefetch import Prefetched
from services.careplan.generate import CarePlanner
from services.careplan.intake import GenerateRequest
from services.fhir.outcome import FhirError

log = logging.getLogger("cicatrix.cds")

NEXT_SESSIONS = 5
SCREENING_KEYS = ("allergies", "pregnancy", "breastfeeding")


async def scar_plan_cards(call: HookCall, data: Prefetched, planner: CarePlanner) -> list[dict[str, Any]]:
    cards = await _cards(call, data, planner)
    needed = ("assessment", "carePlans") + (SCREENING_KEYS if any("suggestions" in c for c in cards) else ())
    unchecked = [PREFETCH_NAMES[key] for key in needed if not data.checked(key)]
    return cards + ([unchecked_card(unchecked)] if unchecked else [])


async def _cards(call: HookCall, data: Prefetched, planner: CarePlanner) -> list[dict[str, Any]]:
    plans = [p for p in data.of("carePlans") if is_cicatrix_plan(p)]
    if plans:
        return [c for c in (_sessions_card(plan) for plan in plans) if c is not None]
    assessment = latest_assessment(data.of("assessment"), planner.questionnaire_url)
    if assessment is None:
        return []
    status = Status(status_answer(data.of("pregnancy"), "pregnant"),
                    status_answer(data.of("breastfeeding"), "breastfeeding"))
    request = GenerateRequest(subject=call.patient_reference, assessment=with_status(assessment, status),
                              allergy_intolerances=[a for a in data.of("allergies")
                                                    if a.get("resourceType") == "AllergyIntolerance"])
    try:
        result = await planner.draft_plan(request, status="draft")
    except FhirError as exc:  # an assessment we cannot plan (unsupported scar type, bad answers): nothing applies
        log.info("no plan proposed on patient-view", extra={"status": exc.status})
        return []
    careplan = result.careplan
    return [card(_one_line_plan(careplan), "info", detail=_plan_detail(careplan),
                 suggestions=[suggestion("Create this scar treatment plan (draft)",
                                         create_action("Create the proposed CarePlan as a draft", careplan))])]


def _sessions_card(plan: dict[str, Any]) -> dict[str, Any] | None:
    now = datetime.now(UTC)
    sessions = [s for s in scheduled_sessions([plan]) if s.moment >= now][:NEXT_SESSIONS]
    if not sessions:
        return None
    first = sessions[0]
    lines = "\n".join(f"- {s.moment:%a %d %b %Y, %H:%M}: {s.name}" for s in sessions)
    title = plan.get("title") or "Scar treatment plan"
    return card(f"Next scar-care session {first.moment:%d %b %Y}: {first.name}", "info",
                detail=f"**{title}** — next sessions:\n\n{lines}")


def _one_line_plan(careplan: dict[str, Any]) -> str:
    activities = [a.get("detail", {}) for a in careplan.get("activity", [])]
    planned = [d for d in activities if not d.get("doNotPerform")]
    period = careplan.get("period") or {}
    names = ", ".join(activity_name(d) for d in planned[:3])
    more = f" +{len(planned) - 3} more" if len(planned) > 3 else ""
    return f"Proposed scar plan from {period.get('start', '?')} to {period.get('end', '?')}: {names}{more}"


def _plan_detail(careplan: dict[str, Any]) -> str:
    lines = []
    for activity in careplan.get("activity", []):
        detail = activity.get("detail") or {}
        name = activity_name(detail)
        events = (detail.get("scheduledTiming") or {}).get("event", [])
        if detail.get("doNotPerform"):
            lines.append(f"- Left out: {detail.get('description', name)}")
        elif events:
            lines.append(f"- {name}: {len(events)} sessions from {events[0][:10]}")
        else:
            lines.append(f"- {name}")
    return "The plan Cicatrix would make for the latest scar assessment:\n\n" + "\n".join(lines)
