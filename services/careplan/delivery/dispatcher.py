"""The dispatcher: claims due deliveries from the outbox and works them off against the EHR.

One loop per process (embedded in the careplan app, or `cicatrix dispatch`):

    claim up to DELIVERY_BATCH_SIZE due rows  ->  one asyncio task per delivery (Sender)
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
from services.careplan.delivery.auth import make_auth
from services.careplan.delivery.claims import Claim
from services.careplan.delivery.ehr_client import EhrClient
from services.careplan.delivery.errors import EhrError, EhrRejected
from services.careplan.delivery.metrics import DeliveryMetrics
from services.careplan.delivery.outbox import NOTIFY_CHANNEL
from services.careplan.delivery.payloads import ReferenceRewriter, assessment_identifier
from services.careplan.delivery.retry import RetryPolicy
from services.careplan.delivery.sending import Delivered, Job, Prior, Sender
from services.careplan.delivery.shapes import NoDeliveryShape, ShapeSelector
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
        self.client = client or EhrClient(
            settings.EHR_BASE_URL, auth=make_auth(settings), connect_timeout=settings.EHR_CONNECT_TIMEOUT_SECONDS,
            timeout=settings.EHR_TIMEOUT_SECONDS, ca_bundle=settings.EHR_CA_BUNDLE)
        self.shapes = ShapeSelector(settings.EHR_DELIVERY, refresh_seconds=settings.EHR_CAPABILITY_REFRESH_SECONDS)
        self.sender = Sender(self.client, self.shapes, read_back=settings.DELIVERY_READ_BACK)
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
            await self.shapes.current(self.client)
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
            claims = await asyncio.to_thread(outbox.claim, self.engine, worker=self.worker, limit=free,
                                             lease_seconds=self.settings.DELIVERY_LEASE_SECONDS)
        except Exception as exc:  # noqa: BLE001 - a database hiccup must not end the loop
            log.warning("claiming failed; will try again", extra={"error": type(exc).__name__})
            return 0
        for claim in claims:
            task = asyncio.create_task(self._process(claim))
            self._in_flight[claim.delivery.id] = (claim, task)
            task.add_done_callback(lambda _t, key=claim.delivery.id: self._done(key))
        return len(claims)

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

    async def _process(self, claim: Claim) -> None:
        delivery = claim.delivery
        attempt = delivery.attempts + 1
        ids = {"delivery_id": delivery.id, "careplan_id": delivery.careplan_id,
               "careplan_version": delivery.careplan_version, "attempt": attempt, "worker": self.worker}
        try:
            job = await asyncio.to_thread(self._job, claim, attempt)
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
        except NoDeliveryShape as error:
            await asyncio.to_thread(outbox.record_failure, self.engine, claim, attempts=attempt, error=str(error),
                                    status=None, outcome=None, ambiguous=claim.was_ambiguous, shape=None)
            self._count("failed", "rejected")
            log.error("the EHR offers no delivery shape", extra=ids)
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
            self.shapes.forget()  # the EHR's capabilities may have changed: read them again next time
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

    def _job(self, claim: Claim, attempt: int) -> Job | str:
        """Everything the attempt needs from our database; a str when the delivery is superseded."""
        delivery = claim.delivery
        with Session(self.engine) as session:
            later = outbox.later_completed(session, delivery.careplan_id, delivery.careplan_version)
            if later is not None:
                return (f"superseded: version {later.careplan_version} of the plan reached the EHR "
                        f"(Task/{later.id})")
            plan = self.store.vread(session, "CarePlan", delivery.careplan_id,
                                    str(delivery.careplan_version)).parsed()
            prior_row = outbox.latest_completed(session, delivery.careplan_id,
                                                before_version=delivery.careplan_version)
            prior = prior_plan = None
            if prior_row is not None and prior_row.ehr_id and prior_row.ehr_type:
                prior = Prior(prior_row.careplan_version, prior_row.shape, prior_row.ehr_type, prior_row.ehr_id,
                              prior_row.ehr_version)
                prior_plan = self.store.vread(session, "CarePlan", delivery.careplan_id,
                                              str(prior_row.careplan_version)).parsed()
            assessments: dict[str, dict[str, str]] = {}
            assessment_resource = None
            for ref in _references(plan, "QuestionnaireResponse"):
                try:
                    response = self.store.read(session, "QuestionnaireResponse", ref).parsed()
                except FhirError:
                    response = None
                assessments[ref] = assessment_identifier(response, ref)
                assessment_resource = assessment_resource or response
            delivered_plans = {}
            for ref in _references(plan, "CarePlan"):
                other = outbox.latest_completed(session, ref)
                if other is not None and other.ehr_type == "CarePlan" and other.ehr_id:
                    delivered_plans[ref] = other.ehr_id
        rewriter = ReferenceRewriter(assessments=assessments, delivered_plans=delivered_plans)
        first_assessment = next(iter(assessments), None)
        return Job(delivery_id=delivery.id, careplan_id=delivery.careplan_id, version=delivery.careplan_version,
                   attempt=attempt, ambiguous=claim.was_ambiguous, plan=plan, prior=prior, prior_plan=prior_plan,
                   assessment=(rewriter.rewrite({"reference": f"QuestionnaireResponse/{first_assessment}"})
                               if first_assessment else None),
                   assessment_resource=assessment_resource, rewriter=rewriter)


def describe(error: Exception) -> str:
    """A one-line reason for the Task (no request or plan content)."""
    if isinstance(error, EhrRejected):
        where = f" to {error.request}" if error.request else ""
        return f"the EHR answered {error.status}{where}: {error.diagnostics()}"
    if isinstance(error, EhrError):
        where = f" ({error.request})" if error.request else ""
        return f"{error}{where}"
    return f"internal error ({type(error).__name__}); see the dispatcher log"


def _references(resource: Any, resource_type: str) -> list[str]:
    """Ids of every relative reference to `resource_type` anywhere in the resource, in order, once each."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            reference = node.get("reference")
            if isinstance(reference, str) and reference.startswith(f"{resource_type}/") \
                    and reference.count("/") == 1 and reference.split("/")[1] not in found:
                found.append(reference.split("/")[1])
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
