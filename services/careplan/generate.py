"""From assessment to stored CarePlan: the `$generate` and `$apply` use cases.

`CarePlanner.draft_plan` does the planning (intake checks, protocol, screening,
schedule) and stores nothing: it is all `$apply` needs. `PlanRepository.save` adds
what makes the plan a record for `$generate` (services/careplan/operations.py): it
stores the assessment and the plan in one transaction, answers a resubmitted
assessment with the plan it already produced, and revokes the active plan of the
same patient and body site that a reassessment replaces. Every CarePlan version the
store writes is published to the plan hooks inside that same transaction (the
delivery outbox is one), so nothing is written that is not also queued.
"""

from __future__ import annotations

import calendar as month_calendar
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql
from sqlalchemy import bindparam, false, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from services.careplan import plausibility
from services.careplan.assessment_limits import DEFAULT_LIMITS, AssessmentLimits
from services.careplan.careplan_builder import build_careplan, plan_identifier
from services.careplan.intake import Assessment, GenerateRequest, check_assessment, stored_response_id
from services.careplan.knowledge import Knowledge, Protocol, versioned
from services.careplan.planning import PlanDraft, make_plan
from services.careplan.scheduling import (
    ClinicCalendar,
    CoursePlan,
    Procedure,
    Schedule,
    SchedulingError,
    schedule,
    symmetric_conflicts,
)
from services.careplan.tables import AssessmentPlan
from services.fhir.loopdb import LoopDatabase, LoopStatement, LoopTransaction
from services.fhir.outcome import Conflict, Issue, PreconditionFailed, ServiceUnavailable, Unprocessable
from services.fhir.store import ResourceStore, StoredResource, WriteListener
from services.fhir.tables import core_table

log = logging.getLogger("cicatrix.careplan.generate")

_ASSESSMENT_PLANS = core_table(AssessmentPlan)
_EXISTING = sql.SQL("SELECT careplan_id FROM {} WHERE subject = %s AND assessment_key = %s").format(
    sql.Identifier(_ASSESSMENT_PLANS.name)).as_bytes()

PlanHook = WriteListener
"""Called inside the plan's transaction for every CarePlan version written: (session, new version, previous). A
hook that is also a `LoopListener` lets a first plan be written on the event loop (`PlanRepository.save_on_loop`)."""


@dataclass
class PlanResult:
    careplan: dict[str, Any]
    assessment: Assessment
    protocol: Protocol
    warnings: list[Issue] = field(default_factory=list)
    """Plausibility warnings about the assessment (also on the plan): $apply answers them in an OperationOutcome."""


def add_months(day: date, months: int) -> date:
    month = day.month - 1 + months
    year, month = day.year + month // 12, month % 12 + 1
    return date(year, month, min(day.day, month_calendar.monthrange(year, month)[1]))


def next_working_day(clinic: ClinicCalendar, today: date) -> date:
    return clinic.next_open_day(today + timedelta(days=1))


Run = Callable[..., Awaitable[Any]]
"""Runs CPU work and awaits its result: the service's work pool (services.fhir.workpool)."""


async def run_here(function: Callable[..., Any], *args: Any) -> Any:
    """Planning outside a service (the command line, the examples): no event loop to keep free."""
    return function(*args)


class CarePlanner:
    def __init__(self, knowledge: Knowledge, clinic: ClinicCalendar, questionnaire_url: str, *,
                 limits: AssessmentLimits = DEFAULT_LIMITS, run: Run = run_here) -> None:
        self.knowledge = knowledge
        self.clinic = clinic
        self.questionnaire_url = questionnaire_url
        self.limits = limits
        self.run = run

    async def draft_plan(self, request: GenerateRequest, *, status: str = "draft",
                         protocol: Protocol | None = None, assessment_reference: str | None = None,
                         identifier: str | None = None, created: datetime | None = None,
                         checked: Assessment | None = None) -> PlanResult:
        """Fetching knowledge is I/O on the event loop; checking and planning are CPU work, run by `run`.
        `checked` is what `check` already made of this request's assessment."""
        today = datetime.now(ZoneInfo(self.clinic.timezone)).date()
        if request.start is not None:
            self.limits.check_start(request.start, today)
        questionnaire = await self.knowledge.questionnaire(self.questionnaire_url)
        assessment = checked or await self.check(request)
        if protocol is None:
            protocol = await self._protocol(request, assessment)
        result: PlanResult = await self.run(self._plan, request, questionnaire, assessment, protocol, today, status,
                                            assessment_reference, identifier, created)
        return result

    async def check(self, request: GenerateRequest) -> Assessment:
        """The assessment checks planning runs (422 with every problem)."""
        questionnaire = await self.knowledge.questionnaire(self.questionnaire_url)
        value_sets = await self.knowledge.answer_value_sets(questionnaire)
        assessment: Assessment = await self.run(check_assessment, request, questionnaire, value_sets)
        return assessment

    def _plan(self, request: GenerateRequest, questionnaire: dict[str, Any], assessment: Assessment,
              protocol: Protocol, today: date, status: str, assessment_reference: str | None,
              identifier: str | None, created: datetime | None) -> PlanResult:
        warnings = plausibility.check(questionnaire, assessment.response, request.patient,
                                      self.knowledge.expressions.evaluate, today)
        allergies = assessment.allergies(request.allergy_intolerances)
        self.limits.check_allergies(allergies)
        draft = make_plan(protocol, assessment, allergies, self.knowledge.expressions)
        refuse_empty_plan(draft)
        start = request.start or next_working_day(self.clinic, today)
        sessions, end = self._schedule(draft, start)
        careplan = build_careplan(
            draft, sessions, assessment, identifier=identifier or plan_identifier(assessment.key, request.subject),
            status=status, start=start, end=end, created=created or datetime.now(UTC),
            assessment_reference=assessment_reference, warnings=[w.diagnostics for w in warnings])
        return PlanResult(careplan, assessment, protocol, warnings)

    async def _protocol(self, request: GenerateRequest, assessment: Assessment) -> Protocol:
        if request.plan_definition:
            protocol = await self.knowledge.protocol_by_canonical(request.plan_definition)
            if protocol is None:
                raise Unprocessable(f"The catalog has no active PlanDefinition {request.plan_definition}",
                                    code="not-found", expression="Parameters.parameter")
            return protocol
        scar = assessment.scar_type or {}
        protocol = await self.knowledge.protocol_for(scar)
        if protocol is None:
            raise Unprocessable(
                f"The catalog has no treatment protocol for scar type {scar.get('display') or scar.get('code')} "
                f"({scar.get('system')}|{scar.get('code')})", code="not-supported",
                expression="QuestionnaireResponse.item.where(linkId='scar-type').answer")
        return protocol

    def _schedule(self, draft: PlanDraft, start: date) -> tuple[Schedule, date]:
        planned = [a for a in draft.activities if a.exclusion is None and not a.is_home_care and a.rhythm]
        keys_by_canonical: dict[str, list[str]] = {}
        for activity in planned:
            for name in (versioned(activity.definition), activity.definition.get("url", "")):
                keys_by_canonical.setdefault(name, []).append(activity.key)
        procedures = symmetric_conflicts([
            Procedure(key=a.key, rhythm=rhythm, min_interval_days=a.min_interval_days,
                      not_same_day=frozenset(k for c in a.not_same_day for k in keys_by_canonical.get(c, [])),
                      apart_days=a.apart_days, rank=a.rank)
            for a in planned if (rhythm := a.rhythm) is not None])
        course = draft.course
        end = add_months(start, course.months_high) if course and course.months_high else None
        try:
            result = schedule(procedures, self.clinic,
                              CoursePlan(start=start, end=end, break_days=course.break_days if course else 0))
        except SchedulingError as exc:
            raise Unprocessable(f"The sessions cannot be scheduled: {exc}", code="business-rule") from None
        if end is None:
            end = max(result.last_day() or start, add_months(start, 1))
        return result, end


def refuse_empty_plan(draft: PlanDraft) -> None:
    """A plan with nothing left to do after screening is no plan: refuse it, naming every exclusion."""
    if draft.planned():
        return
    issues = [Issue(code="business-rule", diagnostics="Screening left no in-clinic procedure and no home care "
                                                      "to plan for this assessment; nothing was stored")]
    for activity in draft.activities:
        if activity.exclusion is not None:
            issues.append(Issue(code="business-rule", severity="information",
                                diagnostics=f"{activity.title}: {activity.exclusion.text}"))
        for preparation in activity.preparations:
            if preparation.exclusion is not None:
                issues.append(Issue(code="business-rule", severity="information",
                                    diagnostics=f"{preparation.name} ({activity.title}): {preparation.exclusion.text}"))
    raise Unprocessable(issues[0].diagnostics, issues=issues)


# ------------------------------------------------------------------- storage


class PlanRepository:
    """Stores assessments and plans; idempotent per assessment, revoking what a reassessment replaces.

    A patient's body site has at most one active plan. Plan writes for one site are serialised (a transaction
    lock per site on PostgreSQL, the database's write lock on SQLite), so a reassessment always sees, and
    revokes, the plan the one before it made active; the partial unique index on `AssessmentPlan.active` holds
    the rule for every other writer, and a save that still collides is retried rather than refused.

    On PostgreSQL the first plan of a body site is written by `save_on_loop`: one transaction on the event loop,
    its statements pipelined. A reassessment, which revokes a plan, and a save that collides take `save`."""

    ATTEMPTS = 5

    def __init__(self, store: ResourceStore, hooks: list[PlanHook]) -> None:
        """Registers `hooks` with the store, after the repository's own: every CarePlan version the store writes
        (a new plan, a revocation, a status change by PUT or PATCH) reaches them, and a second active plan
        fails before anything is queued."""
        self.store = store
        own: list[PlanHook] = [_ActiveFlag()]
        for hook in own + hooks:
            store.listen(hook, types=("CarePlan",))

    def existing(self, session: Session, subject: str, assessment_key: str) -> StoredResource | None:
        row = session.get(AssessmentPlan, (subject, assessment_key))
        return self.store.read(session, "CarePlan", row.careplan_id) if row else None

    async def existing_on_loop(self, database: LoopDatabase, subject: str,
                               assessment_key: str) -> StoredResource | None:
        """`existing` as statements on the event loop (services.fhir.loopdb): one for a new assessment."""
        row = await database.fetch_one(_EXISTING, (subject, assessment_key))
        return await self.store.read_on_loop(database, "CarePlan", row[0]) if row else None

    def save(self, session: Session, result: PlanResult, *, careplan_id: str) -> tuple[StoredResource, bool]:
        """Store the plan (and its assessment); returns (plan, created). A duplicate returns the first plan."""
        for attempt in range(1, self.ATTEMPTS + 1):
            try:
                return self._save(session, _Record.of(result, careplan_id))
            except (IntegrityError, PreconditionFailed, Conflict):
                session.rollback()
                existing = self.existing(session, result.assessment.subject, result.assessment.key)
                if existing is not None:
                    return existing, False
                log.info("careplan save collided; retrying", extra={"careplan_id": careplan_id, "attempt": attempt})
        raise ServiceUnavailable("Other plans for this patient and body site were being stored at the same time; "
                                 "submit the assessment again", headers={"Retry-After": "1"})

    async def save_on_loop(self, database: LoopDatabase, result: PlanResult, *,
                           careplan_id: str) -> tuple[StoredResource, bool] | None:
        """`save` of a body site's first plan as one transaction on the event loop: the site's lock, the look-ups of
        a plan this assessment already made and of the site's active plan in one round trip, then every row (the
        plan, its assessment, what the plan hooks queue) with the commit. Returns (plan, created), the plan an
        earlier submission made included; None, with nothing stored, when `save` must do it: the site has a plan
        to revoke, the write collided with another, or a plan hook writes only in a session."""
        if not self.store.writes_on_loop(("CarePlan", "QuestionnaireResponse")):
            return None
        record = _Record.of(result, careplan_id)
        try:
            async with database.transaction() as transaction:
                await transaction.execute(_LOCK_ON_LOOP, record.site_lock())
                made = await transaction.execute(_EXISTING, (record.subject, record.assessment_key))
                active = await transaction.execute(_ACTIVE_FOR_SITE_ON_LOOP, record.site())
                if (earlier := await made.fetchone()) is not None:
                    raise _Made(earlier[0])
                if await active.fetchone() is not None:
                    raise _Revokes
                _, stored = await self.store.create_in(transaction, record.resources(), ids=record.ids())
                await transaction.execute(_INSERT_RECORD_ON_LOOP, record.row(stored))
        except _Made as made_before:
            return await self.store.read_on_loop(database, "CarePlan", made_before.careplan_id), False
        except (_Revokes, psycopg.IntegrityError):
            return None
        log.info("careplan stored", extra={"careplan_id": stored.id, "replaces": None})
        return stored, True

    def _save(self, session: Session, record: _Record) -> tuple[StoredResource, bool]:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(_LOCK, record.site_lock())
        else:  # SQLite has one writer: a write statement takes its lock, and later reads see what committed before
            session.execute(update(AssessmentPlan).where(false()).values(active=False))
        previous_id = session.scalar(_ACTIVE_FOR_SITE, record.site())
        previous = self.store.read(session, "CarePlan", previous_id) if previous_id else None
        if previous is not None:
            record.careplan["replaces"] = [{"reference": f"CarePlan/{previous.id}"}]
            self._revoke(session, previous, replaced_by=record.careplan_id)  # first: the new plan may be active
        # Both ids derive from (subject, assessment), so a concurrent submission of the same assessment
        # fails here with IntegrityError and is answered with the plan the other one stored.
        _, stored = self.store.create_many(session, record.resources(), ids=record.ids())
        session.execute(_INSERT_RECORD, record.row(stored))
        session.commit()
        log.info("careplan stored", extra={"careplan_id": stored.id, "replaces": previous.id if previous else None})
        return stored, True

    def _revoke(self, session: Session, plan: StoredResource, *, replaced_by: str) -> None:
        resource = plan.parsed()
        resource["status"] = "revoked"
        notes = resource.setdefault("note", [])
        notes.append({"text": f"Revoked: replaced by CarePlan/{replaced_by} after a reassessment."})
        self.store.update(session, "CarePlan", plan.id, resource, if_match=plan.version_id)


class _Revokes(Exception):
    """The body site has an active plan: the save revokes it, in a session."""


class _Made(Exception):
    """The assessment was turned into a plan before: the save answers with that plan."""

    def __init__(self, careplan_id: str) -> None:
        super().__init__(careplan_id)
        self.careplan_id = careplan_id


@dataclass
class _Record:
    """What one save writes: the assessment, the plan, and the row that ties them to the patient's body site."""

    subject: str
    assessment_key: str
    body_site: str
    response: dict[str, Any]
    response_id: str
    careplan: dict[str, Any]
    careplan_id: str

    @classmethod
    def of(cls, result: PlanResult, careplan_id: str) -> _Record:
        assessment = result.assessment
        site = assessment.body_site or {}
        return cls(subject=assessment.subject, assessment_key=assessment.key,
                   body_site=f"{site.get('system', '')}|{site.get('code', '')}", response=dict(assessment.response),
                   response_id=stored_response_id(assessment.subject, assessment.key),
                   careplan=dict(result.careplan), careplan_id=careplan_id)

    def site(self) -> dict[str, str]:
        return {"site_subject": self.subject, "site_body_site": self.body_site}

    def site_lock(self) -> dict[str, int]:
        """The transaction lock that serialises plan writes for one patient and body site (PostgreSQL)."""
        digest = hashlib.blake2b(f"{self.subject}\n{self.body_site}".encode(), digest_size=8).digest()
        return {"key": int.from_bytes(digest, "big", signed=True)}

    def resources(self) -> list[dict[str, Any]]:
        return [self.response, self.careplan]

    def ids(self) -> list[str]:
        return [self.response_id, self.careplan_id]

    def row(self, stored: StoredResource) -> dict[str, Any]:
        return {"subject": self.subject, "assessment_key": self.assessment_key, "body_site": self.body_site,
                "careplan_id": stored.id, "questionnaire_response_id": self.response_id,
                "created": stored.last_updated, "active": self.careplan.get("status") == "active"}


class _ActiveFlag:
    """Plan hook: keeps `AssessmentPlan.active` in step with a changed plan's status (a new plan's row is written
    with it), so that the unique index sees every activation; a second active plan fails the write."""

    def __call__(self, session: Session, stored: StoredResource, previous: StoredResource | None) -> None:
        if previous is not None:
            session.execute(_SET_ACTIVE, self._values(stored))

    async def on_loop(self, transaction: LoopTransaction, stored: StoredResource,
                      previous: StoredResource | None) -> None:
        if previous is not None:
            await transaction.execute(_SET_ACTIVE_ON_LOOP, self._values(stored))

    @staticmethod
    def _values(stored: StoredResource) -> dict[str, Any]:
        return {"plan_id": stored.id, "plan_active": stored.parsed().get("status") == "active"}


_PLANS = _ASSESSMENT_PLANS.c
_LOCK = text("SELECT pg_advisory_xact_lock(:key)")
_ACTIVE_FOR_SITE = select(_PLANS.careplan_id).where(
    _PLANS.subject == bindparam("site_subject"), _PLANS.body_site == bindparam("site_body_site"), _PLANS.active,
).limit(1)
_INSERT_RECORD = insert(_ASSESSMENT_PLANS).values({name: bindparam(name) for name in (
    "subject", "assessment_key", "body_site", "careplan_id", "questionnaire_response_id", "created", "active")})
_SET_ACTIVE = update(_ASSESSMENT_PLANS).where(_PLANS.careplan_id == bindparam("plan_id")).values(
    active=bindparam("plan_active"))
_LOCK_ON_LOOP, _ACTIVE_FOR_SITE_ON_LOOP, _INSERT_RECORD_ON_LOOP, _SET_ACTIVE_ON_LOOP = (
    LoopStatement(statement) for statement in (_LOCK, _ACTIVE_FOR_SITE, _INSERT_RECORD, _SET_ACTIVE))
