"""The dispatcher: the delivery outbox's relay loop over claim, assemble, send and record.

The loop itself is the careplan's outbox relay (`services.careplan.relay`). For each batch
the dispatcher claims due deliveries (`claims.py`) and assembles what each attempt needs
(`assembly.py`) in one thread hop, then runs one asyncio task per delivery: send it
(`sending.Sender`) and record the result (`recording.Recorder`: completed, a retry
with backoff, failed, superseded).

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
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy.engine import Engine

from services.careplan.delivery import claims
from services.careplan.delivery.assembly import Assembled, JobAssembler
from services.careplan.delivery.claims import Claim
from services.careplan.delivery.ehr_client import EhrClient
from services.careplan.delivery.errors import EhrError, EhrRejected
from services.careplan.delivery.metrics import DeliveryMetrics
from services.careplan.delivery.outbox import NOTIFY_CHANNEL
from services.careplan.delivery.recording import FinishHook, Recorder
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

    def _claim_work(self, limit: int) -> list[tuple[str, Work]]:
        """Claim a batch and assemble each attempt's job, in one thread hop and one session for the batch."""
        claimed = claims.claim(self.engine, worker=self.worker, limit=limit, lease_seconds=self.lease_seconds)
        jobs = self.assembler.assemble(self.engine, claimed)
        return [(claim.delivery.id, partial(self._attempt, claim, job))
                for claim, job in zip(claimed, jobs, strict=True)]

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

    async def _attempt(self, claim: Claim, job: Assembled) -> None:
        """One attempt: send the job assembled at claim time and record what came of it."""
        delivery = claim.delivery
        attempt = delivery.attempts + 1
        ids = {"delivery_id": delivery.id, "careplan_id": delivery.careplan_id,
               "careplan_version": delivery.careplan_version, "attempt": attempt, "worker": self.worker}
        try:
            if isinstance(job, Exception):
                raise job
            if isinstance(job, str):
                await self.recorder.superseded(claim, job, ids)
                return
            delivered = await self.sender.deliver(job)
        except asyncio.CancelledError:
            await self.recorder.released(claim, ids)
            raise
        except EhrError as error:
            if isinstance(error, EhrRejected) and error.status == 405:
                self.plans.forget()  # the EHR's capabilities may have changed: read them again next time
            await self.recorder.failed(claim, attempt, error, ids)
            return
        except CannotDeliver as error:
            await self.recorder.undeliverable(claim, attempt, str(error), ids)
            return
        except Exception as error:  # noqa: BLE001 - a bug or a database failure: retry, never lose the row
            log.exception("delivery attempt crashed", extra=ids)
            await self.recorder.failed(claim, attempt, error, ids)
            return
        await self.recorder.succeeded(claim, attempt, delivered, ids)


async def run_until_idle(dispatcher: Relay, timeout: float) -> None:
    """Tests: work until nothing is pending, within `timeout` seconds (any relay: dispatcher or notifier)."""
    started = time.monotonic()
    try:
        await asyncio.wait_for(dispatcher.run(until_idle=True), timeout=timeout)
    except TimeoutError:
        raise TimeoutError(f"{dispatcher.name}: work still open after {time.monotonic() - started:.1f} s") from None
