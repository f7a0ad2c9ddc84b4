"""A CarePlan as plain text for the terminal: what, when, why."""

from __future__ import annotations

import textwrap
from datetime import datetime
from typing import Any

from services.careplan.narrative import rhythm_text


def _dates(events: list[str]) -> str:
    if not events:
        return "-"
    days = [datetime.fromisoformat(e).strftime("%a %d %b %Y") for e in events]
    if len(days) <= 4:
        return ", ".join(days)
    return f"{days[0]}, {days[1]} ... {days[-1]} ({len(days)} sessions)"


def _rows(plan: dict[str, Any]) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    planned, excluded = [], []
    for activity in plan.get("activity", []):
        detail = activity.get("detail", {})
        title = (detail.get("description") or "").split(". ")[0]
        if detail.get("doNotPerform"):
            excluded.append((title, detail.get("statusReason", {}).get("text", "")))
            continue
        if detail.get("kind") == "CommunicationRequest":  # an instruction to the clinician, due before treatment
            due = detail.get("scheduledPeriod", {}).get("end", "the first session")
            planned.append((title, "once", f"before {due}"))
            continue
        timing = detail.get("scheduledTiming", {})
        repeat = timing.get("repeat", {})
        how = rhythm_text(repeat.get("frequency", 1), repeat.get("period", 1), repeat.get("periodUnit", "d"))
        if timing.get("event"):
            planned.append((title, how, _dates(timing["event"])))
        else:
            bounds = repeat.get("boundsPeriod", {})
            planned.append((title, how, f"daily {bounds.get('start', '')} to {bounds.get('end', '')}"))
    return planned, excluded


def render_plan(plan: dict[str, Any]) -> str:
    planned, excluded = _rows(plan)
    period = plan.get("period", {})
    out = [f"{plan.get('title', 'CarePlan')} for {plan.get('subject', {}).get('reference', '')}",
           f"{period.get('start', '')} to {period.get('end', '')} ({plan.get('status', '')})", ""]
    width = max([len(r[0]) for r in planned] + [4])
    out.append(f"{'What':<{width}}  {'How often':<16}  When")
    out.append("-" * (width + 60))
    for title, how, when in planned:
        out.append(f"{title:<{width}}  {how:<16}  {when}")
    if excluded:
        out += ["", "Left out (why):"]
        out += [f"  - {title}: {why}" for title, why in excluded]
    notes = [n.get("text", "") for n in plan.get("note", [])]
    if notes:
        out += ["", "Notes:"]
        out += [textwrap.fill(n, width=100, initial_indent="  - ", subsequent_indent="    ") for n in notes]
    return "\n".join(out)
