"""Reading the EHR's copies of Cicatrix CarePlans: which plans are ours and active, and their scheduled sessions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.careplan.careplan_builder import PLAN_IDENTIFIER_SYSTEM

NOT_HAPPENING = frozenset({"cancelled", "stopped", "completed", "entered-in-error"})


@dataclass(frozen=True)
class Session:
    moment: datetime
    name: str
    canonical: str
    """The ActivityDefinition the session's activity instantiates ('' when the EHR dropped it)."""


def is_cicatrix_plan(plan: dict[str, Any]) -> bool:
    """An active CarePlan that Cicatrix made (it carries the plan identifier Cicatrix gives every plan)."""
    return plan.get("resourceType") == "CarePlan" and plan.get("status") == "active" and any(
        isinstance(i, dict) and i.get("system") == PLAN_IDENTIFIER_SYSTEM for i in plan.get("identifier", []))


def activity_name(detail: dict[str, Any]) -> str:
    """An activity's short name: its code's text, else the first sentence of its description."""
    return (detail.get("code") or {}).get("text") or str(detail.get("description", "session")).split(". ")[0]


def scheduled_sessions(plans: list[dict[str, Any]]) -> list[Session]:
    """Every session still to happen in the active Cicatrix plans among `plans`, earliest first."""
    found = []
    for plan in filter(is_cicatrix_plan, plans):
        for activity in plan.get("activity", []):
            detail = activity.get("detail") or {}
            if detail.get("doNotPerform") or detail.get("status") in NOT_HAPPENING:
                continue
            canonical = next(iter(detail.get("instantiatesCanonical") or []), "")
            name = activity_name(detail)
            for event in (detail.get("scheduledTiming") or {}).get("event", []):
                moment = _moment(event)
                if moment is not None:
                    found.append(Session(moment, name, canonical))
    return sorted(found, key=lambda s: s.moment)


def _moment(value: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
