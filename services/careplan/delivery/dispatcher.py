"""The dispatcher: claims due deliveries from the outbox and works them off against the EHR.

The loop is the careplan's outbox relay (`services.careplan.relay`): claim up to
DELIVERY_BATCH_SIZE due deliveries and read what each needs (one thread hop, one session),
one asyncio task per delivery (Sender), record success / schedule a retry / record the
failure, claim again as slots free, sleep until woken or DELIVERY_POLL_SECONDS.

Everything a delivery needs is read from the database for each attempt and every
outcome is written back before the next claim, so the process can be killed at any
moment: rows it held come back after their lease as *ambiguous* and the next
attempt searches the EHR before sending (see claims.py, sending.py).

`stop()` (SIGTERM in `cicatrix dispatch`, app shutdown when embedded) stops claiming,
lets in-flight deliveries finish for DISPATCHER_SHUTDOWN_GRACE_SECONDS, then cancels
the rest and releases their rows at once (marked ambiguous: a request may be out).

Logs carry delivery, plan and EHR ids only: never plan content (PHI).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

import orjson
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from services.careplan.delivery import claims as outbox
from services.careplan.delivery.claims import Claim
from services.careplan.delivery.ehr_client import EhrClient
from services.careplan.delivery.errors import EhrError, EhrRejected
from services.careplan.delivery.metrics import DeliveryMetrics
from services.careplan.delivery.outbox import NOTIFY_CHANNEL, Delivery
from services.careplan.delivery.payloads import ReferenceRewriter, assessment_identifier
from services.careplan.delivery.request_plan import CannotDeliver, PlanSelector
from services.careplan.delivery.retry import RetryPolicy
from services.careplan.delivery.sending import Delivered, Job, Prior, Sender
from services.careplan.relay import Relay, Work
from services.careplan.searchparams import SEARCH_PARAMS
from services.careplan.tables import CareplanResource, CareplanResourceVersion, CareplanSearchIndex
from services.fhir.outcome import FhirError
from services.fhir.store import ResourceStore, as_utc, utcnow

log = logging.getLogger("cicatrix.careplan.delivery")

FinishHook = Callable[[Connection, Delivery, str], None]
"""Called in the transaction that records a delivery's final state (completed or failed): (connection, row, state)."""


class Dispatcher(Relay):
    channel = NOTIFY_CHANNEL
    name = "dispatcher"

    def __init__(self, settings: Any, engine: Engine, *, metrics: DeliveryMetrics | None = None,
                 client: EhrClient | None = None, worker: str | None = None,
                 rng: random.Random | None = None, finish_hooks: list[FinishHook] | None = None) -> None:
        super().__init__(engine, worker=worker, batch_size=settings.DELIVERY_BATCH_SIZE,
                         poll_seconds=settings.DELIVERY_POLL_SECONDS,
                         grace_seconds=settings.DISPATCHER_SHUTDOWN_GRACE_SECONDS)
        self.settings = settings
        self.metrics = metrics
        self.finish_hooks = list(finish_hooks or [])
        self.rng = rng or random.Random()
        self.client = client or EhrClient.from_settings(settings)
        self.plans = PlanSelector.from_settings(settings)
        self.sender = Sender(self.client, self.plans, read_back=settings.DELIVERY_READ_BACK,
                             search_max_pages=settings.EHR_SEARCH_MAX_PAGES)
        self.policy = RetryPolicy(max_attempts=settings.DELIVERY_MAX_ATTEMPTS, max_age=settings.DELIVERY_MAX_AGE,
                                  base=settings.DELIVERY_BACKOFF_SECONDS, cap=settings.DELIVERY_BACKOFF_MAX_SECONDS)
        self.store = ResourceStore(CareplanResource, CareplanResourceVersion, CareplanSearchIndex, SEARCH_PARAMS)

    # ----------------------------------------------------------------- relay hooks

    def _background(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._read_capabilities())]

    def _open_count(self) -> int:
        return outbox.open_count(self.engine)

    def _next_due(self) -> datetime | None:
        return outbox.next_due(self.engine)

    def _claim_work(self, limit: int) -> list[tuple[str, Work]]:
        return [(claim.delivery.id, partial(self._process, claim, job)) for claim, job in self._claim_jobs(limit)]

    async def close(self) -> None:
        """Close the EHR connections (after `run` returned)."""
        await self.client.close()

    async def _read_capabilities(self) -> None:
        """Read the EHR's CapabilityStatement at start; a failure only means the first delivery tries again."""
        try:
            await self.plans.current(self.client)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the EHR may simply be down right now
            # info, not warning: a down EHR shows on every Task and in the metrics; this line adds nothing
            log.info("EHR CapabilityStatement not readable at start; read again on the first delivery",
                     extra={"error": type(exc).__name__})

    def _claim_jobs(self, limit: int) -> list[tuple[Claim, Job | str | Exception]]:
        """Claim a batch and read what each attempt needs, in one thread hop and one session for the batch.

        Once the claim committed the rows are ours, so reading their jobs never raises: a failure is
        handed to that delivery's attempt, which schedules a retry like any other failed attempt."""
        claims = outbox.claim(self.engine, worker=self.worker, limit=limit,
                              lease_seconds=self.settings.DELIVERY_LEASE_SECONDS)
        if not claims:
            return []
        jobs: list[Job | str | Exception] = []
        try:
            with Session(self.engine) as session:
                completed = outbox.completed_by_plan(session, [claim.delivery.careplan_id for claim in claims])
                for claim in claims:
                    jobs.append(self._job_or_error(session, claim, completed[claim.delivery.careplan_id]))
        except Exception as exc:  # noqa: BLE001 - e.g. the session could not even start: every attempt fails
            jobs += [exc] * (len(claims) - len(jobs))
        return list(zip(claims, jobs, strict=True))

    def _job_or_error(self, session: Session, claim: Claim, completed: list[Delivery]) -> Job | str | Exception:
        try:
            return self._job(session, claim, completed)
        except Exception as exc:  # noqa: BLE001 - the attempt reports it (and retries); the batch goes on
            session.rollback()  # a failed statement must not poison the reads of the next delivery
            return exc

    # ---------------------------------------------------------------- delivery

    async def _process(self, claim: Claim, job: Job | str | Exception) -> None:
        """One attempt, from the job read at claim time (a str: superseded; an Exception: reading it failed)."""
        delivery = claim.delivery
        attempt = delivery.attempts + 1
        ids = {"delivery_id": delivery.id, "careplan_id": delivery.careplan_id,
               "careplan_version": delivery.careplan_version, "attempt": attempt, "worker": self.worker}
        try:
            if isinstance(job, Exception):
                raise job
            if isinstance(job, str):
                await asyncio.to_thread(outbox.record_cancelled, self.engine, claim, reason=job)
                self._count("cancelled", None)
                log.info("delivery superseded", extra=ids)
                return
            delivered = await self.sender.deliver(job)
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.to_thread(outbox.release, self.engine, claim, ambiguous=True))
            self._count(None, "released")
            log.info("delivery released at shutdown", extra=ids)
            raise
        except EhrError as error:
            await self._failed(claim, attempt, error, ids)
            return
        except CannotDeliver as error:
            await asyncio.to_thread(outbox.record_failure, self.engine, claim, attempts=attempt,
                                    error=f"cannot deliver: {error}", status=None, outcome=None,
                                    ambiguous=claim.was_ambiguous, shape=None, then=self._after_finish(claim, "failed"))
            self._count("failed", "rejected")
            log.error("the EHR declares no safe way to deliver", extra=ids | {"missing": str(error)})
            return
        except Exception as error:  # noqa: BLE001 - a bug or a database failure: retry, never lose the row
            log.exception("delivery attempt crashed", extra=ids)
            await self._failed(claim, attempt, error, ids)
            return
        await self._succeeded(claim, attempt, delivered, ids)

    async def _succeeded(self, claim: Claim, attempt: int, delivered: Delivered, ids: dict[str, Any]) -> None:
        written = await asyncio.to_thread(
            outbox.record_success, self.engine, claim, shape=delivered.shape, ehr_type=delivered.ehr_type,
            ehr_id=delivered.ehr_id, ehr_version=delivered.ehr_version, outputs=delivered.outputs,
            readback=delivered.readback, attempts=attempt, then=self._after_finish(claim, "completed"))
        if not written:
            log.warning("lease lost before the result was recorded; the next claim will find it in the EHR",
                        extra=ids)
            return
        self._count("completed", "delivered")
        if self.metrics is not None:
            self.metrics.latency.observe((utcnow() - as_utc(claim.delivery.created)).total_seconds())
            if delivered.readback:
                self.metrics.readback_mismatches.inc()
        log.info("delivered", extra=ids | {"shape": delivered.shape, "ehr_type": delivered.ehr_type,
                                           "ehr_id": delivered.ehr_id, "resent": delivered.resent})

    async def _failed(self, claim: Claim, attempt: int, error: Exception, ids: dict[str, Any]) -> None:
        retryable = getattr(error, "retryable", True)
        ambiguous = claim.was_ambiguous or getattr(error, "ambiguous", True)
        status = error.status if isinstance(error, EhrRejected) else None
        reason = describe(error)
        if isinstance(error, EhrRejected) and error.status == 405:
            self.plans.forget()  # the EHR's capabilities may have changed: read them again next time
        delivery = claim.delivery
        when: datetime | None = None
        if retryable:
            when = self.policy.next_attempt(attempts=attempt, window_start=as_utc(delivery.window_start),
                                            now=utcnow(), retry_after=getattr(error, "retry_after", None),
                                            rng=self.rng)
        if when is not None:
            await asyncio.to_thread(outbox.record_retry, self.engine, claim, attempts=attempt, next_attempt_at=when,
                                    ambiguous=ambiguous, error=reason, status=status, shape=delivery.shape)
            self._count(None, "retry")
            log.info("delivery attempt failed; retry scheduled",
                     extra=ids | {"status": status, "error": type(error).__name__,
                                  "retry_in_s": round((when - utcnow()).total_seconds(), 3)})
            return
        if retryable:
            reason = f"gave up after {attempt} attempt(s) (CAREPLAN_DELIVERY_MAX_ATTEMPTS / _MAX_AGE): {reason}"
        outcome = error.outcome if isinstance(error, EhrRejected) else None
        await asyncio.to_thread(outbox.record_failure, self.engine, claim, attempts=attempt, error=reason,
                                status=status, outcome=outcome, ambiguous=ambiguous, shape=delivery.shape,
                                then=self._after_finish(claim, "failed"))
        self._count("failed", "rejected")
        log.warning("delivery failed", extra=ids | {"status": status, "error": type(error).__name__})

    def _after_finish(self, claim: Claim, state: str) -> Callable[[Connection], None] | None:
        """The finish hooks, bound to this delivery, to run in the transaction that records its final state."""
        if not self.finish_hooks:
            return None

        def run(connection: Connection) -> None:
            for hook in self.finish_hooks:
                hook(connection, claim.delivery, state)

        return run

    def _count(self, outcome: str | None, attempt_result: str | None) -> None:
        if self.metrics is None:
            return
        if outcome:
            self.metrics.deliveries.labels(outcome).inc()
        if attempt_result:
            self.metrics.attempts.labels(attempt_result).inc()

    def _job(self, session: Session, claim: Claim, completed: list[Delivery]) -> Job | str:
        """Everything the attempt needs from our database; a str when the delivery is superseded.

        `completed`: the plan's deliveries that reached the EHR, newest first (`claims.completed_by_plan`)."""
        delivery = claim.delivery
        newest = next((row for row in completed if row.careplan_version != delivery.careplan_version), None)
        if newest is not None and newest.careplan_version > delivery.careplan_version:
            return (f"superseded: version {newest.careplan_version} of the plan reached the EHR "
                    f"(Task/{newest.id})")
        plan = self._plan_version(session, delivery.careplan_id, delivery.careplan_version)
        prior = prior_plan = None
        if newest is not None and newest.ehr_id and newest.ehr_type:  # the EHR holds an earlier version
            prior = Prior(newest.careplan_version, newest.shape, newest.ehr_type, newest.ehr_id, newest.ehr_version)
            prior_plan = self._plan_version(session, delivery.careplan_id, newest.careplan_version)
        references = _references(plan, ("QuestionnaireResponse", "CarePlan"))
        assessments, assessment_resource = self._assessments(session, references["QuestionnaireResponse"])
        rewriter = ReferenceRewriter(assessments=assessments,
                                     delivered_plans=_delivered_plans(session, references["CarePlan"]))
        first_assessment = next(iter(assessments), None)
        return Job(delivery_id=delivery.id, careplan_id=delivery.careplan_id, version=delivery.careplan_version,
                   attempt=delivery.attempts + 1, ambiguous=claim.was_ambiguous, plan=plan, prior=prior,
                   prior_plan=prior_plan,
                   assessment=(rewriter.rewrite({"reference": f"QuestionnaireResponse/{first_assessment}"})
                               if first_assessment else None),
                   assessment_resource=assessment_resource, rewriter=rewriter)

    def _plan_version(self, session: Session, careplan_id: str, version: int) -> dict[str, Any]:
        return self.store.vread(session, "CarePlan", careplan_id, str(version)).parsed()

    def _assessments(self, session: Session,
                     ids: list[str]) -> tuple[dict[str, dict[str, str]], dict[str, Any] | None]:
        """The identifier to send for each referenced assessment, and the first one that is stored here."""
        assessments: dict[str, dict[str, str]] = {}
        first = None
        for ref in ids:
            try:
                response = self.store.read(session, "QuestionnaireResponse", ref).parsed()
            except FhirError:
                response = None
            assessments[ref] = assessment_identifier(response, ref)
            first = first or response
        return assessments, first


def _delivered_plans(session: Session, careplan_ids: list[str]) -> dict[str, str]:
    """Our id -> the EHR's id, for each referenced plan the EHR already holds as a CarePlan."""
    delivered = {}
    for ref in careplan_ids:
        other = outbox.latest_completed(session, ref)
        if other is not None and other.ehr_type == "CarePlan" and other.ehr_id:
            delivered[ref] = other.ehr_id
    return delivered


def describe(error: Exception) -> str:
    """A one-line reason for the Task (no request or plan content)."""
    if isinstance(error, EhrRejected):
        where = f" to {error.request}" if error.request else ""
        return f"the EHR answered {error.status}{where}: {error.diagnostics()}"
    if isinstance(error, EhrError):
        where = f" ({error.request})" if error.request else ""
        return f"{error}{where}"
    return f"internal error ({type(error).__name__}); see the dispatcher log"


def _references(resource: Any, resource_types: tuple[str, ...]) -> dict[str, list[str]]:
    """Per type, the ids of every relative reference to it anywhere in the resource, in order, once each.

    One walk for all the types: plans are large, and this runs for every delivery."""
    found: dict[str, list[str]] = {kind: [] for kind in resource_types}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            reference = node.get("reference")
            if isinstance(reference, str) and reference.count("/") == 1:
                kind, ident = reference.split("/")
                if kind in found and ident not in found[kind]:
                    found[kind].append(ident)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(resource)
    return found


async def run_until_idle(dispatcher: Relay, timeout: float) -> None:
    """Tests: work until nothing is pending, within `timeout` seconds (any relay: dispatcher or notifier)."""
    started = time.monotonic()
    try:
        await asyncio.wait_for(dispatcher.run(until_idle=True), timeout=timeout)
    except TimeoutError:
        raise TimeoutError(f"{dispatcher.name}: work still open after {time.monotonic() - started:.1f} s") from None


def outcome_json(text: str | None) -> dict[str, Any] | None:
    return orjson.loads(text) if text else None
