"""Property tests of the scheduler: every invariant holds for random protocols, start dates and calendars."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import date, timedelta

import holidays
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.careplan.scheduling import (
    MAX_HORIZON_DAYS,
    ClinicCalendar,
    CoursePlan,
    Procedure,
    Rhythm,
    SchedulingError,
    schedule,
    symmetric_conflicts,
)

KEYS = ["aha", "vacuum", "meso", "phono", "derm"]
GERMAN_HOLIDAYS = holidays.country_holidays("DE", subdiv="BE", years=range(2026, 2029))
GERMANY_FOR_DECADES = holidays.country_holidays("DE", years=range(2025, 2055))


@st.composite
def procedures(draw: st.DrawFn) -> list[Procedure]:
    keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=5, unique=True))
    result = []
    for key in keys:
        rhythm = Rhythm(frequency=draw(st.integers(1, 3)), period=draw(st.sampled_from([1, 2])),
                        period_unit=draw(st.sampled_from(["wk", "d", "mo"])), count=draw(st.integers(1, 15)))
        conflicts = frozenset(draw(st.lists(st.sampled_from([k for k in keys if k != key] or [key]), max_size=2)))
        result.append(Procedure(key, rhythm, draw(st.integers(1, 10)), conflicts - {key},
                                apart_days=draw(st.integers(1, 4)), rank=draw(st.integers(1, 3))))
    return symmetric_conflicts(result)


@st.composite
def calendars(draw: st.DrawFn) -> ClinicCalendar:
    days = frozenset(draw(st.lists(st.integers(0, 6), min_size=1, max_size=7, unique=True)))
    start = date(2026, 1, 1)
    closed = frozenset(start + timedelta(days=d) for d in draw(st.lists(st.integers(0, 400), max_size=30)))
    return ClinicCalendar(working_days=days, closed=closed, max_per_day=draw(st.integers(1, 3)),
                          max_visits_per_week=draw(st.integers(1, 5)),
                          timezone=draw(st.sampled_from(["Europe/Berlin", "UTC", "America/New_York"])),
                          holidays=draw(st.sampled_from([frozenset(), GERMAN_HOLIDAYS])))


starts = st.dates(min_value=date(2026, 1, 1), max_value=date(2026, 12, 31))
ends = st.one_of(st.none(), st.integers(60, 540))


@settings(max_examples=150, deadline=None)
@given(procedures(), calendars(), starts, ends, st.integers(0, 45))
def test_schedule_invariants(procs, calendar, start, length, break_days):
    end = start + timedelta(days=length) if length else None
    result = schedule(procs, calendar, CoursePlan(start=start, end=end, break_days=break_days))
    by_day: dict[date, list[str]] = {}
    for procedure in procs:
        moments = result.sessions[procedure.key]
        days = [m.date() for m in moments]
        assert days == sorted(days)
        for previous, current in zip(days, days[1:], strict=False):
            assert (current - previous).days >= procedure.min_interval_days, "minimum interval"
        for moment in moments:
            assert moment.tzinfo is not None and moment.utcoffset() is not None, "session times carry an offset"
            day = moment.date()
            assert day >= start
            if end is not None:
                assert day <= end
            assert calendar.is_open(day), "only on working, non-closed days"
            by_day.setdefault(day, []).append(procedure.key)
        if end is None:
            assert len(moments) <= procedure.rhythm.count
    lookup = {p.key: p for p in procs}
    for keys in by_day.values():
        assert len(keys) <= calendar.max_per_day, "daily cap"
        assert len(keys) == len(set(keys)), "one session of a procedure per day"
        for key in keys:
            assert not (lookup[key].not_same_day & set(keys)), "no conflicting procedures on one day"
    weeks = Counter(day.isocalendar()[:2] for day in by_day)
    assert max(weeks.values(), default=0) <= calendar.max_visits_per_week, "weekly visit budget"
    for procedure in procs:
        for other in procedure.not_same_day:
            gap = max(procedure.apart_days, lookup[other].apart_days)
            for a in result.sessions[procedure.key]:
                for b in result.sessions[other]:
                    assert abs((a.date() - b.date()).days) >= gap, "incompatible procedures kept apart"
        placed_in = [s.number for s in result.series if s.days.get(procedure.key)]
        assert placed_in or result.deferrals(procedure.key) or procedure.key in result.left_over, \
            "nothing is dropped silently"
        for number in result.deferrals(procedure.key):
            assert procedure.key not in result.series[number - 1].days


@settings(max_examples=50, deadline=None)
@given(procedures(), calendars(), starts)
def test_schedule_is_deterministic(procs, calendar, start):
    course = CoursePlan(start=start, end=start + timedelta(days=200), break_days=30)
    assert schedule(procs, calendar, course).sessions == schedule(procs, calendar, course).sessions


@settings(max_examples=50, deadline=None)
@given(calendars(), starts)
def test_one_course_places_every_session_when_the_clinic_is_open(calendar, start):
    dermabrasion = Procedure("derm", Rhythm(frequency=2, period=1, period_unit="wk", count=10, count_max=15), 2)
    calendar = replace(calendar, max_visits_per_week=max(calendar.max_visits_per_week, 2))  # room for 2 a week
    result = schedule([dermabrasion], calendar, CoursePlan(start=start))
    assert len(result.sessions["derm"]) == 10, "one course of therapeutic dermabrasion is 10 sessions"


def test_therapeutic_dermabrasion_twice_a_week_on_clinic_days():
    monday = date(2026, 3, 2)
    result = schedule([Procedure("derm", Rhythm(2, 1, "wk", 10, 15), 2)], ClinicCalendar(timezone="Europe/Berlin"),
                      CoursePlan(start=monday))
    days = [m.date() for m in result.sessions["derm"]]
    assert len(days) == 10
    for week in range(5):
        in_week = [d for d in days if monday + timedelta(weeks=week) <= d < monday + timedelta(weeks=week + 1)]
        assert len(in_week) == 2
    assert result.sessions["derm"][0].isoformat() == "2026-03-02T09:00:00+01:00"
    after_dst = [m for m in result.sessions["derm"] if m.date() > date(2026, 3, 29)]
    assert after_dst and all(m.isoformat().endswith("+02:00") for m in after_dst), "offsets follow DST"


def test_long_courses_repeat_after_the_break():
    start = date(2026, 3, 2)
    result = schedule([Procedure("aha", Rhythm(1, 2, "wk", 5), 7)], ClinicCalendar(),
                      CoursePlan(start=start, end=start + timedelta(days=540), break_days=30))
    days = [m.date() for m in result.sessions["aha"]]
    gaps = [(b - a).days for a, b in zip(days, days[1:], strict=False)]
    assert result.courses > 5 and max(gaps) >= 30


def test_a_full_week_defers_the_lower_ranked_procedure_to_the_next_series_where_it_goes_first():
    monday = date(2026, 3, 2)
    twice = Rhythm(2, 1, "wk", 4)
    procs = symmetric_conflicts([Procedure("peel", twice, 2, frozenset({"meso"}), apart_days=2, rank=1),
                                 Procedure("meso", twice, 2, frozenset(), rank=2)])
    calendar = ClinicCalendar(max_per_day=2, max_visits_per_week=2)
    result = schedule(procs, calendar, CoursePlan(start=monday, end=monday + timedelta(days=120), break_days=14))
    assert result.series[0].days.keys() == {"peel"} and result.series[0].deferred == ("meso",)
    assert "meso" in result.series[1].days and result.deferrals("meso")[0] == 1
    assert result.series[1].deferred == ("peel",), "the deferred procedure goes first; the other waits in turn"


def test_the_longest_waiting_procedure_goes_first_so_none_is_deferred_in_every_series():
    monday = date(2026, 3, 2)
    twice = Rhythm(2, 1, "wk", 4)
    keys = ["a", "b", "c"]  # each needs its own visits: only one fits the weekly budget
    procs = symmetric_conflicts([Procedure(k, twice, 2, frozenset(set(keys) - {k}), apart_days=2, rank=n)
                                 for n, k in enumerate(keys)])
    calendar = ClinicCalendar(max_per_day=2, max_visits_per_week=2)
    result = schedule(procs, calendar, CoursePlan(start=monday, end=monday + timedelta(days=200), break_days=14))
    assert [list(s.days) for s in result.series[:3]] == [["a"], ["b"], ["c"]]
    assert result.deferrals("c")[:2] == [1, 2], "waited two series: ahead of b, which waited one"


def test_compatible_procedures_share_a_visit():
    monday = date(2026, 3, 2)
    procs = [Procedure("vacuum", Rhythm(2, 1, "wk", 6), 2, rank=1), Procedure("phono", Rhythm(2, 1, "wk", 6), 2)]
    result = schedule(procs, ClinicCalendar(max_per_day=2, max_visits_per_week=2), CoursePlan(start=monday))
    assert [m.date() for m in result.sessions["vacuum"]] == [m.date() for m in result.sessions["phono"]]
    assert result.deferrals("phono") == []


def test_no_session_on_a_public_holiday():
    ascension = date(2027, 5, 6)
    calendar = ClinicCalendar(max_visits_per_week=5, holidays=holidays.country_holidays("DE", years=[2027]))
    result = schedule([Procedure("vacuum", Rhythm(1, 1, "d", 5), 1)], calendar, CoursePlan(start=date(2027, 5, 3)))
    days = [m.date() for m in result.sessions["vacuum"]]
    assert ascension not in days and date(2027, 5, 7) in days


@settings(max_examples=60, deadline=None)
@given(working=st.sets(st.integers(0, 6), min_size=1), closed=st.sets(st.integers(0, 60), max_size=30),
       asks=st.lists(st.tuples(st.integers(-400, 9000), st.integers(0, 12), st.integers(0, 40)), min_size=1,
                     max_size=12))
def test_open_days_kept_by_the_calendar_are_the_days_a_walk_finds(working, closed, asks):
    """Plans ask a calendar about windows before, inside and far past what it keeps (growing its stretch of open
    days, or starting a new one): every answer is what walking the calendar day by day gives."""
    origin = date(2027, 1, 4)
    calendar = ClinicCalendar(working_days=frozenset(working),
                              closed=frozenset(origin + timedelta(days=n) for n in closed),
                              holidays=GERMANY_FOR_DECADES)

    def walked(day: date, count: int) -> date:
        found = 0
        while True:
            if day.weekday() in working and day not in calendar.closed and day not in calendar.holidays:
                found += 1
                if found >= max(count, 1):
                    return day
            day += timedelta(days=1)

    for offset, count, length in asks:
        day = origin + timedelta(days=offset)
        assert calendar.open_day_after(day, count) == walked(day, count)
        last = day + timedelta(days=length)
        expected = [d for d in (day + timedelta(days=n) for n in range(length + 1)) if calendar.is_open(d)]
        assert list(calendar.open_days_between(day, last)) == expected


def test_a_calendar_closed_past_the_horizon_is_refused():
    everything = frozenset(date(2027, 1, 1) + timedelta(days=n) for n in range(MAX_HORIZON_DAYS + 10))
    calendar = ClinicCalendar(closed=everything)
    with pytest.raises(SchedulingError, match="whole planning horizon"):
        calendar.open_day_after(date(2027, 1, 1), 1)
    assert calendar.next_open_day(date(2027, 1, 1) + timedelta(days=MAX_HORIZON_DAYS + 10)).weekday() < 5
