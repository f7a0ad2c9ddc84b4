"""The CarePlan's narrative: the plan as XHTML a clinician reads at a glance in the EHR.

Every sentence is derived from the plan it describes: session days from the computed
schedule, breaks from the gaps in that schedule, home care only when home care is
planned, every reason an exclusion has. Nothing the plan does not do is stated, and
nothing is claimed to have happened. All text, content's or caller's, goes through
`xhtml_text`, so the narrative always parses as XHTML.

Sections, in reading order: what the plan is for (scar, site, period, warnings about the
assessment, goals); before the first session (what to tell the patient); in the clinic
(each procedure, its rhythm and preparations, then a month-by-month calendar with the
session days of each procedure); at home (each preparation as an instruction with dose
and time of day); left out and why; alternatives and notes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from services.careplan.planning import PlanDraft, PlannedActivity
from services.careplan.scheduling import Schedule
from services.fhir.characters import xhtml_text as t

UNIT_NAMES = {"d": "day", "wk": "week", "mo": "month", "a": "year", "h": "hour"}
WHEN = {"MORN": "in the morning", "MORN.early": "early in the morning", "MORN.late": "late in the morning",
        "NOON": "at noon", "AFT": "in the afternoon", "EVE": "in the evening", "NIGHT": "at night",
        "HS": "at bedtime", "WAKE": "on waking", "C": "at a meal", "CM": "at breakfast", "CD": "at lunch",
        "CV": "at dinner", "PHS": "after sleep"}
CLINIC_DEFAULT = " (clinic default)"


def rhythm_text(frequency: int, period: float, unit: str) -> str:
    """'2 a week', '1 every 2 weeks': how clinicians say it."""
    name = UNIT_NAMES.get(unit, unit)
    return f"{frequency} a {name}" if period == 1 else f"{frequency} every {period:g} {name}s"


def times_of_day(repeat: dict[str, Any]) -> str:
    """'in the morning and in the evening' from Timing.repeat.when / timeOfDay ('' when neither is given)."""
    words = [WHEN.get(w, w) for w in repeat.get("when", [])] + [f"at {v[:5]}" for v in repeat.get("timeOfDay", [])]
    return " and ".join(words)


@dataclass(frozen=True)
class Break:
    """Days without any clinic session between two sessions, at least as long as the protocol's series break."""

    first: date
    last: date

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1


def clinic_breaks(schedule: Schedule, at_least_days: int) -> list[Break]:
    """The breaks between series, read from the schedule itself (not from the configured break length)."""
    if at_least_days <= 0:
        return []
    visits = sorted(schedule.days())
    return [Break(a + timedelta(days=1), b - timedelta(days=1)) for a, b in zip(visits, visits[1:], strict=False)
            if (b - a).days - 1 >= at_least_days]


def series_sentence(breaks: list[Break]) -> str:
    spans = "; ".join(f"{b.first.isoformat()} to {b.last.isoformat()} ({b.days} days)" for b in breaks)
    return f"Breaks between series of in-clinic procedures, with no clinic session: {spans}."


def home_care_sentence(end: date, breaks: list[Break]) -> str:
    through = ", through the breaks between series" if breaks else ""
    return f"Home care continues every day{through}, until {end.isoformat()}."


def home_care_instruction(activity: PlannedActivity, start: date, end: date) -> str:
    """'Madecassol: apply a thin layer ..., twice a day, in the morning and in the evening, every day from ...'."""
    dosage = (activity.definition.get("dosage") or [{}])[0]
    text = (dosage.get("text") or "").strip().rstrip(".")
    when = times_of_day((dosage.get("timing") or {}).get("repeat") or {})
    name = ", ".join(p.name for p in activity.usable_preparations) or activity.title
    parts = [text[:1].lower() + text[1:] if text else "apply as directed"] + ([when] if when else [])
    marked = CLINIC_DEFAULT.rstrip(")") + " timing)" if activity.clinic_default else ""
    return f"{name}: {', '.join(parts)}; every day from {start.isoformat()} to {end.isoformat()}{marked}."


def _month_starts(first: date, last: date) -> list[date]:
    months, day = [], first.replace(day=1)
    while day <= last:
        months.append(day)
        day = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return months


def calendar_rows(planned: list[PlannedActivity], schedule: Schedule, start: date,
                  end: date) -> list[tuple[date, list[list[int]], int]]:
    """(month, session days of each procedure in that month, clinic visits that month), one row per month."""
    by_month: dict[tuple[int, int, str], list[int]] = defaultdict(list)
    for activity in planned:
        for moment in schedule.sessions.get(activity.key, []):
            by_month[(moment.year, moment.month, activity.key)].append(moment.day)
    visits: dict[tuple[int, int], set[int]] = defaultdict(set)
    visit_days = schedule.days()
    for day in visit_days:
        visits[(day.year, day.month)].add(day.day)
    last = max([end, *visit_days])
    return [(month, [sorted(by_month.get((month.year, month.month, a.key), [])) for a in planned],
             len(visits.get((month.year, month.month), set()))) for month in _month_starts(start, last)]


def narrative(plan: dict[str, Any], draft: PlanDraft, schedule: Schedule, *, start: date, end: date,
              warnings: list[str], notes: dict[str, list[str]]) -> str:
    """`notes` are the plan's notes by heading ('Series', 'Kept apart', 'Notes', ...), each shown under it."""
    active = [a for a in draft.activities if a.exclusion is None]
    in_clinic = [a for a in active if not a.is_home_care]
    home = [a for a in active if a.is_home_care]
    parts = ['<div xmlns="http://www.w3.org/1999/xhtml">',
             f"<p><b>{t(plan['title'])}</b>: {t(plan['description'])}. "
             f"Plan period {start.isoformat()} to {end.isoformat()}.</p>"]
    if warnings:
        parts.append("<p><b>Check the assessment:</b></p><ul>" + "".join(f"<li>{t(w)}</li>" for w in warnings)
                     + "</ul>")
    goals = [g["description"].get("text", "") for g in draft.goals]
    if goals:
        parts.append("<p>Goals:</p><ul>" + "".join(f"<li>{t(g)}</li>" for g in goals) + "</ul>")
    if draft.communications:
        parts.append("<p>For the clinician:</p><ul>"
                     + "".join(f"<li>{t(c.text)}</li>" for c in draft.communications) + "</ul>")
    if in_clinic:
        parts.append(_clinic(in_clinic, schedule, start, end))
    if home:
        parts.append("<p>At home:</p><ul>" + "".join(f"<li>{t(home_care_instruction(a, start, end))}</li>"
                                                     for a in home) + "</ul>")
    excluded = _excluded(draft)
    if excluded:
        parts.append("<p>Left out:</p><ul>" + "".join(f"<li>{t(line)}</li>" for line in excluded) + "</ul>")
    for heading, texts in notes.items():
        if texts:
            parts.append(f"<p>{t(heading)}:</p><ul>" + "".join(f"<li>{t(n)}</li>" for n in texts) + "</ul>")
    parts.append("</div>")
    return "".join(parts)


def _clinic(planned: list[PlannedActivity], schedule: Schedule, start: date, end: date) -> str:
    rows = []
    for activity in planned:
        sessions = schedule.sessions.get(activity.key, [])
        rhythm = activity.rhythm
        how = rhythm_text(rhythm.frequency, rhythm.period, rhythm.period_unit) if rhythm else "-"
        if activity.clinic_default:
            how += CLINIC_DEFAULT
        preparations = ", ".join(p.name for p in activity.usable_preparations) or "-"
        count = f"{len(sessions)}" if sessions else "none: no free clinic day, schedule by hand"
        rows.append(f"<tr><td>{t(activity.title)}</td><td>{t(how)}</td><td>{t(count)}</td>"
                    f"<td>{t(preparations)}</td></tr>")
    table = ("<p>In the clinic:</p><table><thead><tr><th>Procedure</th><th>How often</th><th>Sessions</th>"
             f"<th>Preparations</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    head = "".join(f"<th>{t(a.title)}</th>" for a in planned)
    body = []
    for month, days, visits in calendar_rows(planned, schedule, start, end):
        cells = "".join(f"<td>{', '.join(str(d) for d in ds) or '-'}</td>" for ds in days)
        body.append(f"<tr><td>{month.strftime('%b %Y')}</td>{cells}<td>{visits}</td></tr>")
    calendar = ("<p>Session days, month by month:</p><table><thead><tr><th>Month</th>"
                f"{head}<th>Clinic visits</th></tr></thead><tbody>{''.join(body)}</tbody></table>")
    return table + calendar


def _excluded(draft: PlanDraft) -> list[str]:
    lines = []
    for activity in draft.activities:
        if activity.exclusion is not None:
            lines.append(f"{activity.title}: {activity.exclusion.text}")
            continue
        for preparation in activity.preparations:
            if preparation.exclusion is not None:
                lines.append(f"{preparation.name} ({activity.title}): {preparation.exclusion.text}")
    return lines
