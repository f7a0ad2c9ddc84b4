"""The dispatcher: claims due deliveries from the outbox and works them off against the EHR.

One loop per process (embedded in the careplan app, or `cicatrix dispatch`):

    claim up to DELIVERY_BATCH_SIZE due rows and read what each needs (one thread hop, one session)
    -> one asyncio task per delivery (Sender)
    -> record success / schedule a retry / record the failure  ->  claim again when a slot frees
    idle: sleep until woken (NOTIFY on PostgreSQL, a poke after a local commit, a finished task),
          until the next retry falls due, or DELIVERY_POLL_SECONDS at most (the polling fallback)

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
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.engine import Engine
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
from services.careplan.searchparams import SEARCH_PARAMS
from services.careplan.tables import CareplanResource, CareplanResourceVersion, CareplanSearchIndex
from services.fhir.outcome import FhirError
from services.fhir.store import ResourceStore, as_utc, utcnow

log = logging.getLogger("cicatrix.careplan.delivery")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Dispatcher:
    def __init__(self, settings: Any, engine: Engine, *, metrics: DeliveryMetrics | None = None,
                 client: EhrClient | None = None, worker: str | None = None,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.worker = worker or worker_name()
        self.rng = rng or random.Random()
        self.client = client or EhrClient.from_settings(settings)
        self.plans = PlanSelector.from_settings(settings)
        self.sender = Sender(self.client, self.plans, read_back=settings.DELIVERY_READ_BACK,
                             search_max_pages=settings.EHR_SEARCH_MAX_PAGES)
        self.policy = RetryPolicy(max_attempts=settings.DELIVERY_MAX_ATTEMPTS, max_age=settings.DELIVERY_MAX_AGE,
                                  base=settings.DELIVERY_BACKOFF_SECONDS, cap=settings.DELIVERY_BACKOFF_MAX_SECONDS)
        self.store = ResourceStore(CareplanResource, CareplanResourceVersion, CareplanSearchIndex, SEARCH_PARAMS)
        self._in_flight: dict[str, tuple[Claim, asyncio.Task[None]]] = {}
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    # ----------------------------------------------------------------- control

    def poke(self) -> None:
        """Wake the loop now (thread-safe): called after a commit that queued a delivery."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    def stop(self) -> None:
        """Stop claiming; `run` then finishes or releases what it holds and returns (thread-safe)."""
        self._stopping = True
        self.poke()

    async def run(self, *, until_idle: bool = False) -> None:
        """Work until `stop()`; with `until_idle`, return once no delivery is pending or sending."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        listener = asyncio.create_task(self._listen()) if self.engine.dialect.name == "postgresql" else None
        discovery = asyncio.create_task(self._read_capabilities())
        log.info("dispatcher started", extra={"worker": self.worker, "shape": self.settings.EHR_DELIVERY})
        try:
            while not self._stopping:
                self._wake.clear()
                claimed = await self._claim()
                idle = until_idle and not self._in_flight and not claimed
                if idle and await asyncio.to_thread(outbox.open_count, self.engine) == 0:
                    return
                if claimed and len(self._in_flight) < self.settings.DELIVERY_BATCH_SIZE:
                    continue  # there may be more due right now
                await self._sleep()
        finally:
            discovery.cancel()
            if listener is not None:
                listener.cancel()
            await self._drain()
            log.info("dispatcher stopped", extra={"worker": self.worker})

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

    async def _claim(self) -> int:
        batch = self.settings.DELIVERY_BATCH_SIZE
        free = batch - len(self._in_flight)
        if free <= 0 or (self._in_flight and free < max(1, batch // 2)):
            return 0  # claim in batches: one claim transaction per few deliveries, not per delivery
        try:
            claimed = await asyncio.to_thread(self._claim_jobs, free)
        except Exception as exc:  # noqa: BLE001 - a database hiccup must not end the loop
            log.warning("claiming failed; will try again", extra={"error": type(exc).__name__})
            return 0
        for claim, job in claimed:
            task = asyncio.create_task(self._process(claim, job))
            self._in_flight[claim.delivery.id] = (claim, task)
            task.add_done_callback(lambda _t, key=claim.delivery.id: self._done(key))
        return len(claimed)

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

    def _done(self, key: str) -> None:
        self._in_flight.pop(key, None)
        if self._wake is not None:
            self._wake.set()

    async def _sleep(self) -> None:
        """Until woken, the next retry or lease falls due, or the poll interval passes."""
        timeout = self.settings.DELIVERY_POLL_SECONDS
        due = None
        if not self._in_flight:  # with deliveries in flight, each one finishing wakes the loop anyway
            try:
                due = await asyncio.to_thread(outbox.next_due, self.engine)
            except Exception:  # noqa: BLE001 - the poll interval still bounds the sleep
                due = None
        if due is not None:
            timeout = min(timeout, max(0.0, (due - utcnow()).total_seconds()) + 0.005)
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    async def _drain(self) -> None:
        """Shutdown: give in-flight deliveries the grace period, then cancel (they release their rows)."""
        tasks = [task for _, task in self._in_flight.values()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.settings.DISPATCHER_SHUTDOWN_GRACE_SECONDS)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)

    async def _listen(self) -> None:
        """LISTEN careplan_delivery on a connection of its own; reconnects, the poll covers any gap."""
        import psycopg

        conninfo = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not self._stopping:
            try:
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as connection:
                    await connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    async for _ in connection.notifies():
                        if self._wake is not None:
                            self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - fall back to polling, try to listen again later
                log.warning("LISTEN connection lost; polling meanwhile", extra={"error": type(exc).__name__})
                await asyncio.sleep(self.settings.DELIVERY_POLL_SECONDS)

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
                                    ambiguous=claim.was_ambiguous, shape=None)
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
            readback=delivered.readback, attempts=attempt)
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
                                status=status, outcome=outcome, ambiguous=ambiguous, shape=delivery.shape)
        self._count("failed", "rejected")
        log.warning("delivery failed", extra=ids | {"status": status, "error": type(error).__name__})

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


async def run_until_idle(dispatcher: Dispatcher, timeout: float) -> None:
    """Tests and `cicatrix dispatch --drain`: work until nothing is pending, within `timeout` seconds."""
    started = time.monotonic()
    try:
        await asyncio.wait_for(dispatcher.run(until_idle=True), timeout=timeout)
    except TimeoutError:
        raise TimeoutError(f"deliveries still open after {time.monotonic() - started:.1f} s") from None


def outcome_json(text: str | None) -> dict[str, Any] | None:
    return orjson.loads(text) if text else None
