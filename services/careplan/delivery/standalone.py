"""`cicatrix dispatch`: delivery workers outside the API process (each also sends subscription notifications).

Run as many as the EHR accepts against PostgreSQL (they share the outbox through
`FOR UPDATE SKIP LOCKED`); against SQLite run one (SQLite has no row locks; see
claims.py). SIGTERM or SIGINT stops claiming, lets in-flight deliveries finish for
CAREPLAN_DISPATCHER_SHUTDOWN_GRACE_SECONDS and releases the rest; exit status 0.
`--drain` exits once no delivery is pending (batch use, tests).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from prometheus_client import CollectorRegistry, start_http_server

from services.careplan.delivery.dispatcher import Dispatcher
from services.careplan.delivery.metrics import DeliveryMetrics
from services.careplan.settings import CareplanSettings
from services.careplan.subscriptions.events import make_delivery_event_hook
from services.careplan.subscriptions.notifier import Notifier
from services.fhir.db import make_engine
from services.fhir.observability import configure_logging

log = logging.getLogger("cicatrix.careplan.delivery")


async def _main(settings: CareplanSettings, *, drain: bool) -> int:
    engine = make_engine(settings.DATABASE_URL)
    registry = CollectorRegistry()
    metrics = DeliveryMetrics(registry, engine)
    if settings.DISPATCHER_METRICS_PORT:
        start_http_server(settings.DISPATCHER_METRICS_PORT, addr=settings.HOST, registry=registry)
    dispatcher = Dispatcher(settings, engine, metrics=metrics, finish_hooks=[make_delivery_event_hook()])
    notifier = Notifier(settings, engine)
    loop = asyncio.get_running_loop()

    def stop() -> None:
        dispatcher.stop()
        notifier.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    if engine.dialect.name == "sqlite":
        log.info("SQLite outbox: run a single dispatcher (no row locks to share the work)")
    try:
        if drain:  # deliveries first: their results may queue notifications
            await dispatcher.run(until_idle=True)
            await notifier.run(until_idle=True)
        else:
            await asyncio.gather(dispatcher.run(), notifier.run())
    finally:
        await dispatcher.close()
        await notifier.close()
        engine.dispose()
    return 0


def dispatch(*, drain: bool = False) -> int:
    settings = CareplanSettings()
    configure_logging(settings.LOG_LEVEL)
    return asyncio.run(_main(settings, drain=drain))
