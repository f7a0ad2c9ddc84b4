"""Prometheus metrics of delivery, in the registry of the app (or of the standalone dispatcher).

    careplan_deliveries_total{outcome}            finished deliveries: completed | failed | cancelled
    careplan_delivery_attempts_total{result}      attempts: delivered | retry | rejected | released
    careplan_delivery_readback_mismatches_total   deliveries whose read-back showed dropped elements
    careplan_delivery_latency_seconds             enqueue -> delivered (histogram)
    careplan_delivery_backlog                     deliveries not finished (pending or sending), from the database
    careplan_delivery_oldest_pending_age_seconds  age of the oldest of them (0 when none)

Backlog and age are read from the outbox at scrape time, so every replica reports
the same true numbers whether or not it runs a dispatcher.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

from services.careplan.delivery.claims import backlog
from services.fhir.store import utcnow

log = logging.getLogger("cicatrix.careplan.delivery.metrics")


class BacklogCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("careplan_delivery_backlog", "Deliveries not yet finished")
        yield GaugeMetricFamily("careplan_delivery_oldest_pending_age_seconds",
                                "Age of the oldest unfinished delivery")

    def collect(self) -> Iterator[Metric]:
        try:
            count, oldest = backlog(self.engine)
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail because the database is down
            log.warning("backlog metrics unavailable", extra={"error": type(exc).__name__})
            return
        yield GaugeMetricFamily("careplan_delivery_backlog", "Deliveries not yet finished", value=count)
        age = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
        yield GaugeMetricFamily("careplan_delivery_oldest_pending_age_seconds",
                                "Age of the oldest unfinished delivery", value=max(0.0, age))


class DeliveryMetrics:
    def __init__(self, registry: CollectorRegistry, engine: Engine) -> None:
        self.deliveries = Counter("careplan_deliveries_total", "Deliveries finished, by outcome", ["outcome"],
                                  registry=registry)
        self.attempts = Counter("careplan_delivery_attempts_total", "Delivery attempts, by result", ["result"],
                                registry=registry)
        self.readback_mismatches = Counter("careplan_delivery_readback_mismatches_total",
                                           "Delivered plans the EHR stored with elements missing", registry=registry)
        self.latency = Histogram("careplan_delivery_latency_seconds", "Time from enqueue to delivered",
                                 buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400),
                                 registry=registry)
        registry.register(BacklogCollector(engine))
