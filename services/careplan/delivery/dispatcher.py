"""The dispatcher: the delivery outbox's relay loop over claim, assemble, send and record.

The loop itself is the careplan's outbox relay (`services.careplan.relay`). For each batch
the dispatcher writes the results of finished attempts and claims due deliveries in one
transaction (`claims.record_and_claim`), then assembles what each attempt needs
(`assembly.py`) on the same connection, all in one thread hop; then it runs one asyncio
task per delivery: send it (`sending.Sender`) and turn what came of it into the result to
write (`recording.Recorder`: completed, a retry with backoff, failed, superseded).

Everything a delivery needs is read from the database for each attempt and every
outcome is written back with the next claim (within the relay's settle time), so the
process can be killed at any moment: rows it held, delivered or not, come back after
their lease as *ambiguous* and the next attempt searches the EHR before sending, finding
what an attempt whose result was not yet written had delivered (see claims.py, sending.py).

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
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy.engine import Connection, Engine

from services.careplan.delivery import claims
from services.careplan.delivery.assembly import Assembled, JobAssembler
from services.careplan.delivery.claims import Claim
from services.careplan.delivery.ehr_client import EhrClient
from services.careplan.delivery.errors import EhrError, EhrRejected
from services.careplan.delivery.metrics import DeliveryMetrics
from services.careplan.delivery.outbox import NOTIFY_CHANNEL
from services.careplan.delivery.recording import FinishHook, Outcome, Recorder
from services.careplan.delivery.request_plan import CannotDeliver, PlanSelector
from services.careplan.delivery.retry import RetryPolicy
from services.careplan.delivery.sending import Sender
from services.careplan.relay import Relay, Work

log = logging.getLogger("cicatrix.careplan.delivery")


class Dispatcher(Relay):
    """The delivery relay: each claimed delivery is assembled, sent and recorded by the parts it holds."""

    channel = NOTIFY_CHANNEL
    name = "dispatcher"

    def __init__(self, settings: Any, engine: Engine, *, metrics: DeliveryMetrics | None = None,
                 client: EhrClient | None = None, worker: str | None = None,
                 rng: random.Random | None = None, finish_hooks: list[FinishHook] | None = None) -> None:
        super().__init__(engine, worker=worker, batch_size=settings.DELIVERY_BATCH_SIZE,
                         poll_seconds=settings.DELIVERY_POLL_SECONDS,
                         grace_seconds=settings.DISPATCHER_SHUTDOWN_GRACE_SECONDS,
                         lease_seconds=settings.DELIVERY_LEASE_SECONDS)
        self.client = client or EhrClient.from_settings(settings)
        self.plans = PlanSelector.from_settings(settings)
        self.assembler = JobAssembler()
        self.sender = Sender(self.client, self.plans, read_back=settings.DELIVERY_READ_BACK,
                             search_max_pages=settings.EHR_SEARCH_MAX_PAGES)
        policy = RetryPolicy(max_attempts=settings.DELIVERY_MAX_ATTEMPTS, max_age=settings.DELIVERY_MAX_AGE,
                             base=settings.DELIVERY_BACKOFF_SECONDS, cap=settings.DELIVERY_BACKOFF_MAX_SECONDS)
        self.recorder = Recorder(engine, policy, metrics=metrics, finish_hooks=finish_hooks, rng=rng)

    # ----------------------------------------------------------------- relay hooks

    def _background(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._read_capabilities())]

    def _renew_work(self, keys: list[str]) -> None:
        claims.QUEUE.renew(self.engine, worker=self.worker, ids=keys, lease_seconds=self.lease_seconds)

    def _open_count(self) -> int:
        return claims.open_count(self.engine)

    def _next_due(self) -> datetime | None:
        return claims.next_due(self.engine)

    def _claim_work(self, limit: int, results: list[object]) -> list[tuple[str, Work]]:
        """Write the finished attempts' results, claim a batch and assemble each attempt's job: one thread hop,
        one connection, one transaction for the writes and the claim."""
        outcomes = [result for result in results if isinstance(result, Outcome)]
        with self.engine.connect() as connection:
            written: list[bool | None]
            try:
                batch_written, claimed = claims.record_and_claim(
                    connection, [outcome.result for outcome in outcomes], worker=self.worker, limit=limit,
                    lease_seconds=self.lease_seconds)
                written = list(batch_written)
            except Exception:
                if not outcomes:
                    raise
                connection.rollback()
                # one result (a finish hook) may be what failed: each on its own, so the others are not held back
                written = [self._write_alone(connection, outcome) for outcome in outcomes]
                claimed = [] if limit <= 0 else claims.record_and_claim(
                    connection, [], worker=self.worker, limit=limit, lease_seconds=self.lease_seconds)[1]
            for outcome, was_written in zip(outcomes, written, strict=True):
                if was_written is not None:
                    outcome.report(was_written)
            jobs = self.assembler.assemble(connection, claimed)
        return [(claim.delivery.id, partial(self._attempt, claim, job))
                for claim, job in zip(claimed, jobs, strict=True)]

    @staticmethod
    def _write_alone(connection: Connection, outcome: Outcome) -> bool | None:
        """One result in a transaction of its own; None when writing it failed (its row comes back after its lease,
        and the next attempt finds in the EHR whatever this one delivered)."""
        try:
            with connection.begin():
                return claims.write(connection, outcome.result)
        except Exception:  # noqa: BLE001 - the others are written all the same
            log.exception("recording a delivery result failed", extra={"delivery_id": outcome.result.claim.delivery.id})
            return None

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

    # ---------------------------------------------------------------- delivery

    async def _attempt(self, claim: Claim, job: Assembled) -> Outcome:
        """One attempt: send the job assembled at claim time; what came of it is written with the next claim."""
        delivery = claim.delivery
        attempt = delivery.attempts + 1
        ids = {"delivery_id": delivery.id, "careplan_id": delivery.careplan_id,
               "careplan_version": delivery.careplan_version, "attempt": attempt, "worker": self.worker}
        try:
            if isinstance(job, Exception):
                raise job
            if isinstance(job, str):
                return self.recorder.superseded(claim, job, ids)
            delivered = await self.sender.deliver(job)
        except asyncio.CancelledError:
            await self.recorder.released(claim, ids)
            raise
        except EhrError as error:
            if isinstance(error, EhrRejected) and error.status == 405:
                self.plans.forget()  # the EHR's capabilities may have changed: read them again next time
            return self.recorder.failed(claim, attempt, error, ids)
        except CannotDeliver as error:
            return self.recorder.undeliverable(claim, attempt, str(error), ids)
        except Exception as error:  # noqa: BLE001 - a bug or a database failure: retry, never lose the row
            log.exception("delivery attempt crashed", extra=ids)
            return self.recorder.failed(claim, attempt, error, ids)
        return self.recorder.succeeded(claim, attempt, delivered, ids)


async def run_until_idle(dispatcher: Relay, timeout: float) -> None:
    """Tests: work until nothing is pending, within `timeout` seconds (any relay: dispatcher or notifier)."""
    started = time.monotonic()
    try:
        await asyncio.wait_for(dispatcher.run(until_idle=True), timeout=timeout)
    except TimeoutError:
        raise TimeoutError(f"{dispatcher.name}: work still open after {time.monotonic() - started:.1f} s") from None
