"""Delivery wired into the careplan app: the outbox hook, the metrics, the in-process dispatcher.

`create_app` makes one `EmbeddedDelivery`, adds its `enqueue` hook to the plan hooks
(so every CarePlan version written is queued in the same transaction) and passes
`start` / `stop` to `build_app` as startup / shutdown hooks. With
CAREPLAN_DISPATCHER=off the hook and the metrics stay (plans are still queued and
the backlog is still visible); only the loop does not run, because `cicatrix
dispatch` workers do the sending.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from services.careplan.delivery.dispatcher import Dispatcher
from services.careplan.delivery.ehr_client import EhrClient
from services.careplan.delivery.metrics import DeliveryMetrics
from services.careplan.delivery.outbox import EnqueueHook
from services.careplan.delivery.recording import FinishHook
from services.careplan.delivery.request_plan import CurrentPlan, PlanSelector
from services.fhir.deps import ServiceContext

log = logging.getLogger("cicatrix.careplan.delivery")


class EmbeddedDelivery:
    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.dispatcher: Dispatcher | None = None
        self.metrics: DeliveryMetrics | None = None
        self._task: asyncio.Task[None] | None = None
        self.enqueue = EnqueueHook(self.poke)
        self.finish_hooks: list[FinishHook] = []
        """Run in the transaction that records a delivery's final state (e.g. subscription events)."""
        self._own: tuple[EhrClient, PlanSelector] | None = None
        """Client and plan of `request_plan` when no dispatcher runs here (CAREPLAN_DISPATCHER=off)."""

    async def request_plan(self) -> CurrentPlan:
        """The EHR's current request plan: the running dispatcher's, else read here (cached the same way)."""
        if self.dispatcher is not None:
            client, plans = self.dispatcher.client, self.dispatcher.plans
        else:
            if self._own is None:
                self._own = (EhrClient.from_settings(self.settings), PlanSelector.from_settings(self.settings))
            client, plans = self._own
        await plans.current(client)
        assert plans.latest is not None
        return plans.latest

    async def _read_plan(self) -> None:
        """Without a dispatcher here, read the EHR's plan once at start anyway, so /readyz can report it."""
        try:
            await self.request_plan()
        except Exception as exc:  # noqa: BLE001 - the EHR may be down; $ehr-capabilities reads it again
            log.info("EHR CapabilityStatement not readable at start", extra={"error": type(exc).__name__})

    def not_ready(self) -> str | None:
        """For /readyz: why no plan can be delivered to the EHR, as last read (None: it can, or not read yet).

        Only the cached plan is consulted: a readiness probe must not wait on the EHR."""
        for plans in (self.dispatcher.plans if self.dispatcher else None, self._own[1] if self._own else None):
            if plans is not None and plans.latest is not None and plans.latest.plan.cannot_create:
                return f"Care plans cannot be delivered: {plans.latest.plan.cannot_create}"
        return None

    def poke(self) -> None:
        """Wake the in-process dispatcher (thread-safe; a no-op when it is off)."""
        if self.dispatcher is not None:
            self.dispatcher.poke()

    def register_metrics(self, ctx: ServiceContext) -> None:
        self.metrics = DeliveryMetrics(ctx.metrics.registry, ctx.engine)

    async def start(self, ctx: ServiceContext) -> None:
        if self.settings.DISPATCHER != "embedded":
            log.info("embedded dispatcher off (CAREPLAN_DISPATCHER=off): run `cicatrix dispatch`")
            self._task = asyncio.create_task(self._read_plan(), name="careplan-ehr-capabilities")
            return
        self.dispatcher = Dispatcher(self.settings, ctx.engine, metrics=self.metrics, finish_hooks=self.finish_hooks)
        self._task = asyncio.create_task(self.dispatcher.run(), name="careplan-dispatcher")

    async def stop(self, ctx: ServiceContext) -> None:
        if self.dispatcher is None and self._task is not None:  # off: only the start-up read may be running
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._own is not None:
            await self._own[0].close()
            self._own = None
        dispatcher, task = self.dispatcher, self._task
        if dispatcher is None or task is None:
            return
        dispatcher.stop()
        try:
            await asyncio.wait_for(task, timeout=self.settings.DISPATCHER_SHUTDOWN_GRACE_SECONDS + 10)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
        finally:
            await dispatcher.close()
            self.dispatcher = self._task = None
