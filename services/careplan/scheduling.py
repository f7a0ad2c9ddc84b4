"""Turning treatment rhythms into sessions on real clinic dates.

The catalog says *how often* (Timing.repeat: frequency per period, count to
countMax sessions), *how far apart at least* (minimum interval), *what must not
share a day and how many days apart it stays* (not-same-day, with its gap), *what
comes first* when not everything fits (rank) and, for long courses, the break
between series. The clinic says *when it is open* (working weekdays, public
holidays, closed dates), how many procedures a patient may have in one visit, how
many visits a week a patient is asked to make, and its time zone.

The scheduler is deterministic. Series follow each other (the next starts a break
after the last session of the previous one). Within a series procedures are placed
by rank; each session goes on an admissible day within a tolerance window after its
ideal date, preferring a day the patient already comes in. A procedure whose rhythm
cannot be kept within the series (the weekly visit budget, the daily cap and the
days kept free around incompatible procedures leave no room) is deferred whole to
the next series, where deferred procedures go first, the longest-waiting first: the
plan rotates instead of dropping anything, and every deferral is recorded with its series. It never places
a session on a closed day or a holiday, never exceeds the daily cap or the weekly
visit budget, never puts two incompatible procedures closer than their gap, and
always respects the minimum interval.

Internally days are day numbers (`date.toordinal()`): the scheduler tries hundreds of days per plan, and integers
are cheaper to add, compare and bisect than dates. The calendar's public methods and the Schedule speak dates.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections import Counter, defaultdict
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from functools import cached_property
from zoneinfo import ZoneInfo

PERIOD_DAYS = {"d": 1.0, "wk": 7.0, "mo": 30.4375, "a": 365.25}
MAX_HORIZON_DAYS = 5 * 366
"""No plan reaches further than this; a calendar that cannot fit the sessions within it is refused."""
OPEN_DAYS_KEPT = 4 * MAX_HORIZON_DAYS
"""Days a calendar remembers whether it is open on: plans starting over several years, each within the horizon."""
STRETCH_GROWTH_DAYS = 366
"""How far past what was asked the calendar's stretch of open days grows: a year, so it grows seldom."""
UNRANKED = 1_000_000
"""Rank of a procedure the content gives no rank: after every ranked one, in protocol order."""
_NEVER = date.max.toordinal()
"""Start and end of the stretch a calendar keeps before it has scanned any (a day number)."""


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

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """How many days each session's ideal date lies after the first's."""
        return tuple(math.floor(n * self.interval_days) for n in range(self.count))

    @cached_property
    def tolerances(self) -> tuple[int, int]:
        """How many open clinic days the first session of a series, and each later one, may slip past its ideal
        date before the series is deferred.

        Half an interval for a session within the series (a twice-weekly session a day or two late); the first
        session of a series may take a whole interval to find its place among the others."""
        return max(2, math.ceil(self.interval_days)), max(2, math.ceil(self.interval_days / 2) + 1)


@dataclass(frozen=True)
class Procedure:
    key: str
    rhythm: Rhythm
    min_interval_days: int = 1
    not_same_day: frozenset[str] = frozenset()
    apart_days: int = 1
    """Least days between this procedure and one in `not_same_day` (a pair keeps the larger of the two)."""
    rank: int = UNRANKED
    """Lower ranks are placed first when the visit budget cannot hold every procedure of a series."""


@dataclass(frozen=True)
class ClinicCalendar:
    working_days: frozenset[int] = frozenset({0, 1, 2, 3, 4})
    """Weekday numbers, Monday = 0."""
    closed: frozenset[date] = frozenset()
    """Clinic-specific closures."""
    max_per_day: int = 2
    timezone: str = "UTC"
    first_session: time = time(9, 0)
    slot_minutes: int = 45
    max_visits_per_week: int = 3
    """Patient-burden budget: days a patient is asked to come in per ISO week."""
    holidays: Container[date] = field(default=frozenset(), compare=False, hash=False)
    """Public holidays of the clinic's country (a `holidays` calendar, or any container of dates)."""
    _stretch: list[_Stretch] = field(default_factory=lambda: [_Stretch(_NEVER, _NEVER, ())], init=False,
                                     repr=False, compare=False, hash=False)
    """The open days of the stretch of calendar scanned so far, kept for every plan (which look up their windows
    in it by bisection; a holiday lookup is not free): one value, replaced whole, so plans drafted in other
    threads never see it half-built."""

    def __post_init__(self) -> None:
        if not self.working_days:
            raise SchedulingError("The clinic calendar has no working day")
        if self.max_per_day < 1:
            raise SchedulingError("At least one procedure a day must be allowed")
        if self.max_visits_per_week < 1:
            raise SchedulingError("At least one visit a week must be allowed")

    def is_open(self, day: date) -> bool:
        number = day.toordinal()
        kept = self._stretch[0]
        if kept.start <= number < kept.end:
            at = bisect_left(kept.days, number)
            return at < len(kept.days) and kept.days[at] == number
        return self._opens(day)

    def _opens(self, day: date) -> bool:
        return day.weekday() in self.working_days and day not in self.closed and day not in self.holidays

    def next_open_day(self, day: date) -> date:
        return self.open_day_after(day, 1)

    def open_day_after(self, day: date, count: int) -> date:
        """The `count`-th open day at or after `day` (the first for a count below 1)."""
        return date.fromordinal(self.open_number_after(day.toordinal(), count))

    def open_days_between(self, first: date, last: date) -> Sequence[date]:
        """The open days from `first` to `last`, in order."""
        return [date.fromordinal(n) for n in self.open_numbers_between(first.toordinal(), last.toordinal())]

    def open_number_after(self, number: int, count: int) -> int:
        """`open_day_after` on day numbers."""
        wanted = max(count, 1)
        kept = self._stretch[0]
        # The kept stretch holds every open day from `number` on that it reaches: look there before growing anything.
        stretch = kept if kept.start <= number < kept.end else self._covering(number, number + 7 * wanted)
        while True:
            at = bisect_left(stretch.days, number) + wanted - 1
            if at < len(stretch.days) and stretch.days[at] - number < MAX_HORIZON_DAYS:
                return stretch.days[at]
            if stretch.end - number >= MAX_HORIZON_DAYS:
                raise SchedulingError("The clinic is closed for the whole planning horizon")
            stretch = self._covering(number, stretch.end)

    def open_numbers_between(self, first: int, last: int) -> Sequence[int]:
        """`open_days_between` on day numbers."""
        days = self._covering(first, last).days
        return days[bisect_left(days, first):bisect_right(days, last)]

    def _covering(self, first: int, last: int) -> _Stretch:
        """A stretch holding every open day from `first` to `last`: the one kept, grown by at least a year when
        it falls short, or a new one when growing it would keep more than OPEN_DAYS_KEPT days."""
        kept = self._stretch[0]
        if kept.start <= first and last < kept.end:
            return kept
        start, end = min(kept.start, first), max(kept.end, last + 1 + STRETCH_GROWTH_DAYS)
        if kept.start == _NEVER or end - start > OPEN_DAYS_KEPT:
            start, end = first, last + 1 + STRETCH_GROWTH_DAYS
            grown = _Stretch(start, end, self._scan(start, end))
        else:
            grown = _Stretch(start, end, self._scan(start, kept.start) + kept.days + self._scan(kept.end, end))
        self._stretch[0] = grown
        return grown

    def _scan(self, start: int, end: int) -> tuple[int, ...]:
        return tuple(number for number in range(start, end) if self._opens(date.fromordinal(number)))


@dataclass(frozen=True)
class _Stretch:
    """The open days from `start` up to `end` (exclusive), in order, as day numbers."""

    start: int
    end: int
    days: tuple[int, ...]



@dataclass(frozen=True)
class CoursePlan:
    """How long the treatment lasts and how in-clinic courses repeat within it."""

    start: date
    end: date | None = None
    """Last day of the whole treatment; None means one course of each procedure."""
    break_days: int = 0
    """Pause between the end of one in-clinic course and the start of the next."""


@dataclass(frozen=True)
class Series:
    """One series of in-clinic procedures: what was placed in it and what had to wait."""

    number: int
    start: date
    days: dict[str, tuple[date, ...]]
    """Session days of each procedure placed in this series."""
    deferred: tuple[str, ...] = ()
    """Procedures whose rhythm this series could not hold, in rank order."""
    truncated: tuple[str, ...] = ()
    """Procedures cut short because the course ends."""

    @property
    def end(self) -> date | None:
        return max((d[-1] for d in self.days.values() if d), default=None)


@dataclass
class Schedule:
    sessions: dict[str, list[datetime]] = field(default_factory=dict)
    series: list[Series] = field(default_factory=list)
    max_visits_per_week: int = 0
    left_over: tuple[str, ...] = ()
    """Procedures still waiting when the course had no room for a further series that could hold any of them."""
    kept_apart: dict[tuple[str, str], int] = field(default_factory=dict)
    """Least days between two incompatible procedures of this plan, by (key, other key) in plan order."""

    @property
    def courses(self) -> int:
        return len(self.series)

    def days(self) -> dict[date, list[str]]:
        by_day: dict[date, list[str]] = defaultdict(list)
        for key, moments in self.sessions.items():
            for moment in moments:
                by_day[moment.date()].append(key)
        return dict(by_day)

    def last_day(self) -> date | None:
        moments = [m for ms in self.sessions.values() for m in ms]
        return max(moments).date() if moments else None

    def breaks(self, key: str) -> list[int]:
        """Days without this procedure between two of its series (from last session to next first session)."""
        runs = [s.days[key] for s in self.series if s.days.get(key)]
        return [(later[0] - earlier[-1]).days for earlier, later in zip(runs, runs[1:], strict=False)]

    def deferrals(self, key: str) -> list[int]:
        """Numbers of the series this procedure was deferred from."""
        return [s.number for s in self.series if key in s.deferred]


def schedule(procedures: Sequence[Procedure], calendar: ClinicCalendar, course: CoursePlan) -> Schedule:
    """Place every procedure's sessions series by series until `course.end` (one series when it is None)."""
    lookup = {p.key: p for p in procedures}
    book = _Bookings(calendar, lookup)
    result = Schedule(sessions={p.key: [] for p in procedures}, max_visits_per_week=calendar.max_visits_per_week)
    order_of = {p.key: n for n, p in enumerate(procedures)}
    result.kept_apart = {pair: book.gaps[pair[0]][pair[1]] for pair in sorted(
        ((key, other) for key, gaps in book.gaps.items() for other in gaps
         if key in order_of and other in order_of and order_of[key] < order_of[other]),
        key=lambda pair: (order_of[pair[0]], order_of[pair[1]]))}
    ranked = sorted(procedures, key=lambda p: p.rank)  # stable: protocol order within a rank
    start = calendar.next_open_day(course.start).toordinal()
    course_end = course.end.toordinal() if course.end else None
    last_allowed = course_end or course.start.toordinal() + MAX_HORIZON_DAYS
    last_session: dict[str, int] = {}  # each procedure's last session so far: the minimum interval holds across series
    waiting: Counter[str] = Counter()  # series each procedure has waited since it was last placed
    while ranked:
        order = sorted(ranked, key=lambda p: -waiting[p.key])  # stable: rank order among equal waits
        placed: dict[str, list[int]] = {}
        deferred: list[str] = []
        truncated: list[str] = []
        for procedure in order:
            days, cut = _place(procedure, start, book, last_allowed, last_session.get(procedure.key))
            if not days:
                deferred.append(procedure.key)
                continue
            placed[procedure.key] = days
            if cut:
                truncated.append(procedure.key)
        # Rotation within the series: what waited may still fit after the others' sessions, before the series ends.
        series_end = max((d[-1] for d in placed.values()), default=start)
        for key in list(deferred):
            procedure = lookup[key]
            later = start + 7
            limit = min(series_end, last_allowed)
            span = procedure.rhythm.offsets[-1]
            while later < series_end and later + span <= limit:  # past that, the last session cannot fit
                days, cut = _place(procedure, later, book, limit, last_session.get(key))
                if days and not cut:
                    placed[key] = days
                    deferred.remove(key)
                    break
                book.remove(key, days)
                later += 7
        if not placed:  # no room for another series: what still waits is said, not dropped
            result.left_over = tuple(deferred)
            break
        result.series.append(Series(len(result.series) + 1, date.fromordinal(start),
                                    {key: tuple(map(date.fromordinal, days)) for key, days in placed.items()},
                                    tuple(deferred), tuple(truncated)))
        for key, placed_days in placed.items():
            result.sessions[key].extend(_moments(placed_days, key, book.booked, calendar))
            last_session[key] = placed_days[-1]
        waiting = Counter({key: waiting[key] + 1 for key in deferred})
        next_start = series_end + course.break_days + 1
        if course_end is None or next_start > course_end:
            break
        start = next_start
    for key in result.sessions:
        result.sessions[key].sort()
    return result


class _Bookings:
    """What is booked so far: procedures per day and visits per ISO week, with the admissibility rules. Days are
    day numbers."""

    def __init__(self, calendar: ClinicCalendar, procedures: dict[str, Procedure]) -> None:
        self.calendar = calendar
        self.booked: dict[int, list[str]] = defaultdict(list)
        self.days_of: dict[str, list[int]] = defaultdict(list)
        """The days each procedure is booked on, in order: spacing rules look up their neighbours by bisection.
        Each list is kept for the whole schedule, changed in place."""
        self.visit_days: list[int] = []
        """The days anything is booked on, in order."""
        self.visits: Counter[int] = Counter()
        self.gaps: dict[str, dict[str, int]] = {key: {} for key in procedures}
        """Least days apart for each conflicting pair (a pair keeps the larger of the two procedures' gaps)."""
        for key, procedure in procedures.items():
            for other in sorted(procedure.not_same_day):
                theirs = procedures.get(other)
                gap = max(procedure.apart_days, theirs.apart_days if theirs else 1, 1)
                self.gaps[key][other] = max(gap, self.gaps[key].get(other, 0))
                self.gaps.setdefault(other, {})[key] = self.gaps[key][other]
        self._gaps_around = {key: tuple((self.days_of[other], gap - 1, gap) for other, gap in gaps.items())
                             for key, gaps in self.gaps.items()}
        """The gaps as (the other procedure's days, how far before, how far after a day they may not be), for
        `_apart`."""

    def first_day_for(self, procedure: Procedure, earliest: int, latest: int) -> int | None:
        """The first day from `earliest` to `latest` that can take `procedure` and that the patient already comes in,
        else the first open day that can take it (a new visit, within the week's budget).

        Every visit day is open (it was chosen here). A visit day in the window was refused by the first pass, so
        the second looks only at days with nothing booked."""
        gaps = self._gaps_around.get(procedure.key)
        booked, most = self.booked, self.calendar.max_per_day
        for day in self.visit_days[bisect_left(self.visit_days, earliest):bisect_right(self.visit_days, latest)]:
            if len(booked[day]) < most and (not gaps or self._apart(gaps, day)):
                return day
        visits, budget = self.visits, self.calendar.max_visits_per_week
        for day in self.calendar.open_numbers_between(earliest, latest):
            if not booked.get(day) and visits[_week(day)] < budget and (not gaps or self._apart(gaps, day)):
                return day
        return None

    @staticmethod
    def _apart(gaps: tuple[tuple[list[int], int, int], ...], day: int) -> bool:
        """Whether no procedure of `gaps` (a procedure's `_gaps_around`) is booked less than its gap away from
        `day`."""
        for days, before, after in gaps:
            if days:
                nearest = bisect_left(days, day - before)
                if nearest < len(days) and days[nearest] < day + after:
                    return False
        return True

    def add(self, key: str, day: int) -> None:
        if not self.booked[day]:
            self.visits[_week(day)] += 1
            insort(self.visit_days, day)
        self.booked[day].append(key)
        insort(self.days_of[key], day)

    def remove(self, key: str, days: Iterable[int]) -> None:
        for day in days:
            self.booked[day].remove(key)
            self.days_of[key].remove(day)
            if not self.booked[day]:
                self.visits[_week(day)] -= 1
                self.visit_days.remove(day)


def _week(day: int) -> int:
    """The ISO week of day number `day`, as the day number of its Monday (day number 1 is a Monday)."""
    return day - (day - 1) % 7


def _place(procedure: Procedure, start: int, book: _Bookings, last_allowed: int,
           previous: int | None) -> tuple[list[int], bool]:
    """Days for one series of one procedure, and whether the course end cut it short.

    Each session has an ideal date from the rhythm; it goes on the first admissible day the patient already comes
    in, else the first admissible day, within the rhythm's tolerance. A session with no such day defers the whole
    series (empty list, nothing booked). `previous` is the procedure's last session of an earlier series: the
    minimum interval holds across series. The days returned are booked."""
    days: list[int] = []
    gap = max(procedure.min_interval_days, 1)
    first_tolerance, later_tolerance = procedure.rhythm.tolerances
    open_after = book.calendar.open_number_after
    last = previous
    for offset in procedure.rhythm.offsets:
        ideal = start + offset
        earliest = ideal if last is None else max(ideal, last + gap)
        if earliest > last_allowed:
            return days, bool(days)
        tolerance = open_after(earliest, later_tolerance if days else first_tolerance)
        day = book.first_day_for(procedure, earliest, min(tolerance, last_allowed))
        if day is None:
            if tolerance > last_allowed:  # the course ends before the rhythm's window does: keep what fits
                return days, True
            book.remove(procedure.key, days)
            return [], False
        book.add(procedure.key, day)
        days.append(day)
        last = day
    return days, False


def _moments(days: Iterable[int], key: str, booked: dict[int, list[str]], calendar: ClinicCalendar) -> list[datetime]:
    """Session start times: the day's first slot, later slots for the day's later procedures (local time zone)."""
    zone = ZoneInfo(calendar.timezone)
    moments = []
    for day in days:
        slot = booked[day].index(key)
        start = datetime.combine(date.fromordinal(day), calendar.first_session, zone) + timedelta(
            minutes=slot * calendar.slot_minutes)
        moments.append(start)
    return moments


def symmetric_conflicts(procedures: Sequence[Procedure]) -> list[Procedure]:
    """Make not-same-day symmetric: if A must not share a day with B, neither may B with A."""
    conflicts: dict[str, set[str]] = {p.key: set(p.not_same_day) for p in procedures}
    for p in procedures:
        for other in p.not_same_day:
            conflicts.setdefault(other, set()).add(p.key)
    return [replace(p, not_same_day=frozenset(conflicts[p.key])) for p in procedures]
