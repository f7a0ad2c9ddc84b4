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

from services.careplan.delivery.dispatcher import Dispatcher, FinishHook
from services.careplan.delivery.metrics import DeliveryMetrics
from services.careplan.delivery.outbox import make_enqueue_hook
from services.fhir.service import ServiceContext

log = logging.getLogger("cicatrix.careplan.delivery")


class EmbeddedDelivery:
    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.dispatcher: Dispatcher | None = None
        self.metrics: DeliveryMetrics | None = None
        self._task: asyncio.Task[None] | None = None
        self.enqueue = make_enqueue_hook(self.poke)
        self.finish_hooks: list[FinishHook] = []
        """Run in the transaction that records a delivery's final state (e.g. subscription events)."""

    def poke(self) -> None:
        """Wake the in-process dispatcher (thread-safe; a no-op when it is off)."""
        if self.dispatcher is not None:
            self.dispatcher.poke()

    def register_metrics(self, ctx: ServiceContext) -> None:
        self.metrics = DeliveryMetrics(ctx.metrics.registry, ctx.engine)

    async def start(self, ctx: ServiceContext) -> None:
        if self.settings.DISPATCHER != "embedded":
            log.info("embedded dispatcher off (CAREPLAN_DISPATCHER=off): run `cicatrix dispatch`")
            return
        self.dispatcher = Dispatcher(self.settings, ctx.engine, metrics=self.metrics, finish_hooks=self.finish_hooks)
        self._task = asyncio.create_task(self.dispatcher.run(), name="careplan-dispatcher")

    async def stop(self, ctx: ServiceContext) -> None:
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
