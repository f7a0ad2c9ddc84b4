"""Turning treatment rhythms into sessions on real clinic dates.

The catalog says *how often* (Timing.repeat: frequency per period, count to
countMax sessions), *how far apart at least* (minimum interval), *what must not
share a day* (not-same-day) and, for long courses, the break between repeated
courses. The clinic says *when it is open* (working weekdays, closed dates), how
many procedures a patient may have in one day, and its time zone.

The scheduler is deterministic: procedures are placed in protocol order, each
session on the first admissible day at or after its ideal date, so the same input
and configuration always give the same plan. It never places a session on a closed
day, never exceeds the daily cap, never puts two conflicting procedures on one day,
and always respects the minimum interval.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

PERIOD_DAYS = {"d": 1.0, "wk": 7.0, "mo": 30.4375, "a": 365.25}
MAX_HORIZON_DAYS = 5 * 366
"""No plan reaches further than this; a calendar that cannot fit the sessions within it is refused."""


class SchedulingError(ValueError):
    """The sessions cannot be placed on this calendar (e.g. no working day left within the horizon)."""


@dataclass(frozen=True)
class Rhythm:
    """A Timing.repeat pattern: `frequency` sessions every `period` `period_unit`, `count` sessions in a course."""

    frequency: int = 1
    period: float = 1.0
    period_unit: str = "wk"
    count: int = 1
    count_max: int | None = None

    @property
    def interval_days(self) -> float:
        """The ideal distance between two sessions (3.5 days for twice a week)."""
        return PERIOD_DAYS[self.period_unit] * self.period / max(self.frequency, 1)


@dataclass(frozen=True)
class Procedure:
    key: str
    rhythm: Rhythm
    min_interval_days: int = 1
    not_same_day: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ClinicCalendar:
    working_days: frozenset[int] = frozenset({0, 1, 2, 3, 4})
    """Weekday numbers, Monday = 0."""
    closed: frozenset[date] = frozenset()
    max_per_day: int = 2
    timezone: str = "UTC"
    first_session: time = time(9, 0)
    slot_minutes: int = 45

    def __post_init__(self) -> None:
        if not self.working_days:
            raise SchedulingError("The clinic calendar has no working day")
        if self.max_per_day < 1:
            raise SchedulingError("At least one procedure a day must be allowed")

    def is_open(self, day: date) -> bool:
        return day.weekday() in self.working_days and day not in self.closed

    def next_open_day(self, day: date) -> date:
        for offset in range(MAX_HORIZON_DAYS):
            candidate = day + timedelta(days=offset)
            if self.is_open(candidate):
                return candidate
        raise SchedulingError("The clinic is closed for the whole planning horizon")


@dataclass(frozen=True)
class CoursePlan:
    """How long the treatment lasts and how in-clinic courses repeat within it."""

    start: date
    end: date | None = None
    """Last day of the whole treatment; None means one course of each procedure."""
    break_days: int = 0
    """Pause between the end of one in-clinic course and the start of the next."""


@dataclass
class Schedule:
    sessions: dict[str, list[datetime]] = field(default_factory=dict)
    courses: int = 0

    def days(self) -> dict[date, list[str]]:
        by_day: dict[date, list[str]] = defaultdict(list)
        for key, moments in self.sessions.items():
            for moment in moments:
                by_day[moment.date()].append(key)
        return dict(by_day)

    def last_day(self) -> date | None:
        moments = [m for ms in self.sessions.values() for m in ms]
        return max(moments).date() if moments else None


def schedule(procedures: Sequence[Procedure], calendar: ClinicCalendar, course: CoursePlan) -> Schedule:
    """Place every procedure's sessions; repeat courses (after breaks) until `course.end` when it is set."""
    booked: dict[date, list[str]] = defaultdict(list)
    result = Schedule(sessions={p.key: [] for p in procedures})
    course_start = calendar.next_open_day(course.start)
    horizon = course.start + timedelta(days=MAX_HORIZON_DAYS)
    while True:
        course_days: list[date] = []
        for procedure in procedures:
            previous = result.sessions[procedure.key][-1].date() if result.sessions[procedure.key] else None
            days = _place(procedure, course_start, calendar, booked, course.end or horizon, previous)
            for day in days:
                booked[day].append(procedure.key)
            course_days.extend(days)
            result.sessions[procedure.key].extend(_moments(days, procedure.key, booked, calendar))
        if not course_days:
            break
        result.courses += 1
        if course.end is None:
            break
        next_start = max(course_days) + timedelta(days=course.break_days + 1)
        if next_start > course.end or not procedures:
            break
        course_start = next_start
    for key in result.sessions:
        result.sessions[key].sort()
    return result


def _place(procedure: Procedure, start: date, calendar: ClinicCalendar, booked: dict[date, list[str]],
           last_allowed: date, previous: date | None) -> list[date]:
    """Days for one course of one procedure: ideal dates from the rhythm, nudged forward to admissible days.

    `previous` is the procedure's last session of an earlier course: the minimum interval holds across courses."""
    days: list[date] = []
    gap = max(procedure.min_interval_days, 1)
    for n in range(procedure.rhythm.count):
        ideal = start + timedelta(days=math.floor(n * procedure.rhythm.interval_days))
        last = days[-1] if days else previous
        earliest = max(ideal, last + timedelta(days=gap)) if last else ideal
        day = _first_admissible(procedure, earliest, calendar, booked, last_allowed)
        if day is None:
            if n == 0:
                return []
            break
        days.append(day)
    return days


def _first_admissible(procedure: Procedure, earliest: date, calendar: ClinicCalendar,
                      booked: dict[date, list[str]], last_allowed: date) -> date | None:
    day = earliest
    while day <= last_allowed:
        taken = booked.get(day, [])
        if (calendar.is_open(day) and len(taken) < calendar.max_per_day
                and not any(other in procedure.not_same_day for other in taken)):
            return day
        day += timedelta(days=1)
    return None


def _moments(days: Iterable[date], key: str, booked: dict[date, list[str]], calendar: ClinicCalendar) -> list[datetime]:
    """Session start times: the day's first slot, later slots for the day's later procedures (local time zone)."""
    zone = ZoneInfo(calendar.timezone)
    moments = []
    for day in days:
        slot = booked[day].index(key)
        start = datetime.combine(day, calendar.first_session, zone) + timedelta(minutes=slot * calendar.slot_minutes)
        moments.append(start)
    return moments


def symmetric_conflicts(procedures: Sequence[Procedure]) -> list[Procedure]:
    """Make not-same-day symmetric: if A must not share a day with B, neither may B with A."""
    conflicts: dict[str, set[str]] = {p.key: set(p.not_same_day) for p in procedures}
    for p in procedures:
        for other in p.not_same_day:
            conflicts.setdefault(other, set()).add(p.key)
    return [Procedure(p.key, p.rhythm, p.min_interval_days, frozenset(conflicts[p.key])) for p in procedures]
