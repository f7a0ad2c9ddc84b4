"""Recording an attempt's result: completed, retry scheduled, failed, superseded, or released.

Each result becomes an `Outcome`: the write to the delivery's outbox row (`claims.Result`, a
compare-and-set on the lease) and what to count and log once it is written. The dispatcher writes
the outcomes of finished attempts together, in the transaction of its next claim. Whether a failed
attempt is retried, and when, is the retry policy's answer (`retry.RetryPolicy`); when it
gives up, or the EHR rejects the delivery for good, the delivery fails.

The final states (completed, failed) run the finish hooks in the transaction that writes
them, so whatever they record (a subscription event) commits with the state or not at all.

Logs carry delivery, plan and EHR ids only: never plan content (PHI).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection, Engine

from services.careplan.delivery import claims
from services.careplan.delivery.claims import Claim
from services.careplan.delivery.errors import EhrError, EhrRejected
from services.careplan.delivery.metrics import DeliveryMetrics
from services.careplan.delivery.outbox import Delivery
from services.careplan.delivery.retry import RetryPolicy
from services.careplan.delivery.sending import Delivered
from services.fhir.store import as_utc, utcnow

log = logging.getLogger("cicatrix.careplan.delivery")

FinishHook = Callable[[Connection, Delivery, str], None]
"""Called in the transaction that records a delivery's final state (completed or failed): (connection, row, state)."""


@dataclass(frozen=True)
class Outcome:
    """An attempt's result to write (`result`) and what to tell once it is written or found taken over (`report`)."""

    result: claims.Result
    report: Callable[[bool], None]
    """Called with whether the result was written (False: another worker holds the row now)."""


class Recorder:
    """Turns each attempt's result into the write for its outbox row; counts and logs it once written."""

    def __init__(self, engine: Engine, policy: RetryPolicy, *, metrics: DeliveryMetrics | None = None,
                 finish_hooks: list[FinishHook] | None = None, rng: random.Random | None = None) -> None:
        self.engine = engine
        self.policy = policy
        self.metrics = metrics
        self.finish_hooks = list(finish_hooks or [])
        self.rng = rng or random.Random()

    def succeeded(self, claim: Claim, attempt: int, delivered: Delivered, ids: dict[str, Any]) -> Outcome:
        result = claims.success(claim, shape=delivered.shape, ehr_type=delivered.ehr_type, ehr_id=delivered.ehr_id,
                                ehr_version=delivered.ehr_version, outputs=delivered.outputs,
                                readback=delivered.readback, attempts=attempt,
                                then=self._after_finish(claim, "completed"))
        latency = (utcnow() - as_utc(claim.delivery.created)).total_seconds()

        def report(written: bool) -> None:
            if not written:
                log.warning("lease lost before the result was recorded; the next claim will find it in the EHR",
                            extra=ids)
                return
            self._count("completed", "delivered")
            if self.metrics is not None:
                self.metrics.latency.observe(latency)
                if delivered.readback:
                    self.metrics.readback_mismatches.inc()
            log.info("delivered", extra=ids | {"shape": delivered.shape, "ehr_type": delivered.ehr_type,
                                               "ehr_id": delivered.ehr_id, "resent": delivered.resent})

        return Outcome(result, report)

    def failed(self, claim: Claim, attempt: int, error: Exception, ids: dict[str, Any]) -> Outcome:
        """A failed attempt: a retry when the error allows one and the policy has one left, else failed."""
        retryable = getattr(error, "retryable", True)
        ambiguous = claim.was_ambiguous or getattr(error, "ambiguous", True)
        status = error.status if isinstance(error, EhrRejected) else None
        reason = describe(error)
        delivery = claim.delivery
        when: datetime | None = None
        if retryable:
            when = self.policy.next_attempt(attempts=attempt, window_start=as_utc(delivery.window_start),
                                            now=utcnow(), retry_after=getattr(error, "retry_after", None),
                                            rng=self.rng)
        if when is not None:
            retry_in = round((when - utcnow()).total_seconds(), 3)

            def report_retry(written: bool) -> None:
                if written:
                    self._count(None, "retry")
                log.info("delivery attempt failed; retry scheduled",
                         extra=ids | {"status": status, "error": type(error).__name__, "retry_in_s": retry_in})

            return Outcome(claims.retry(claim, attempts=attempt, next_attempt_at=when, ambiguous=ambiguous,
                                        error=reason, status=status, shape=delivery.shape), report_retry)
        if retryable:
            reason = f"gave up after {attempt} attempt(s) (CAREPLAN_DELIVERY_MAX_ATTEMPTS / _MAX_AGE): {reason}"
        outcome = error.outcome if isinstance(error, EhrRejected) else None

        def report_failure(written: bool) -> None:
            if written:
                self._count("failed", "rejected")
            log.warning("delivery failed", extra=ids | {"status": status, "error": type(error).__name__})

        return Outcome(claims.failure(claim, attempts=attempt, error=reason, status=status, outcome=outcome,
                                      ambiguous=ambiguous, shape=delivery.shape,
                                      then=self._after_finish(claim, "failed")), report_failure)

    def undeliverable(self, claim: Claim, attempt: int, missing: str, ids: dict[str, Any]) -> Outcome:
        """The EHR declares no safe way to receive the plan: failed at once, no retry."""

        def report(written: bool) -> None:
            if written:
                self._count("failed", "rejected")
            log.error("the EHR declares no safe way to deliver", extra=ids | {"missing": missing})

        return Outcome(claims.failure(claim, attempts=attempt, error=f"cannot deliver: {missing}", status=None,
                                      outcome=None, ambiguous=claim.was_ambiguous, shape=None,
                                      then=self._after_finish(claim, "failed")), report)

    def superseded(self, claim: Claim, reason: str, ids: dict[str, Any]) -> Outcome:
        def report(written: bool) -> None:
            if written:
                self._count("cancelled", None)
            log.info("delivery superseded", extra=ids)

        return Outcome(claims.cancelled(claim, reason=reason), report)

    async def released(self, claim: Claim, ids: dict[str, Any]) -> None:
        """Shutdown cancelled the attempt: the row goes back at once, ambiguous (a request may be out).

        Written at once, not with the next claim (there is none), and shielded: the release must be written
        even while the attempt is being cancelled."""
        await asyncio.shield(asyncio.to_thread(claims.record, self.engine, claims.release(claim, ambiguous=True)))
        self._count(None, "released")
        log.info("delivery released at shutdown", extra=ids)

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


def describe(error: Exception) -> str:
    """A one-line reason for the Task (no request or plan content)."""
    if isinstance(error, EhrRejected):
        where = f" to {error.request}" if error.request else ""
        return f"the EHR answered {error.status}{where}: {error.diagnostics()}"
    if isinstance(error, EhrError):
        where = f" ({error.request})" if error.request else ""
        return f"{error}{where}"
    return f"internal error ({type(error).__name__}); see the dispatcher log"
