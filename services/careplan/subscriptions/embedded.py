"""Subscriptions wired into the careplan app: the event hooks and the in-process notifier.

`create_app` adds `plan_hook` to the plan hooks and `delivery_hook` to the dispatcher's
finish hooks, so every event is queued in the transaction that causes it, and runs the
notifier beside the dispatcher (CAREPLAN_DISPATCHER=embedded). With
CAREPLAN_DISPATCHER=off, `cicatrix dispatch` runs a notifier with each dispatcher.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from services.careplan.subscriptions.events import PlanEventHook, make_delivery_event_hook
from services.careplan.subscriptions.notifier import Notifier
from services.fhir.deps import ServiceContext

log = logging.getLogger("cicatrix.careplan.subscriptions")


class EmbeddedSubscriptions:
    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.notifier: Notifier | None = None
        self._task: asyncio.Task[None] | None = None
        self.plan_hook = PlanEventHook(self.poke)
        self.delivery_hook = make_delivery_event_hook(self.poke)

    def poke(self) -> None:
        """Wake the in-process notifier (thread-safe; a no-op when it is off)."""
        if self.notifier is not None:
            self.notifier.poke()

    async def start(self, ctx: ServiceContext) -> None:
        if self.settings.DISPATCHER != "embedded":
            return
        self.notifier = Notifier(self.settings, ctx.engine)
        self._task = asyncio.create_task(self.notifier.run(), name="careplan-notifier")

    async def stop(self, ctx: ServiceContext) -> None:
        notifier, task = self.notifier, self._task
        if notifier is None or task is None:
            return
        notifier.stop()
        try:
            await asyncio.wait_for(task, timeout=self.settings.DISPATCHER_SHUTDOWN_GRACE_SECONDS + 10)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
        finally:
            await notifier.close()
            self.notifier = self._task = None
