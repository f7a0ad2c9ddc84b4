"""Fixtures of the subscription tests: a receiver on loopback, the app on a fresh database, a notifier drain.

The app runs with its dispatcher off; tests run the notifier (and the delivery dispatcher, with the
subscription finish hook) until idle, so every step is explicit. Timings are shrunk as for delivery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from services.careplan.settings import CareplanSettings
from services.careplan.subscriptions.events import make_delivery_event_hook
from services.careplan.subscriptions.notifier import Notifier
from services.careplan.subscriptions.tables import Notification, Subscription
from tests.delivery.conftest import FAST, drain, engine, pg_engine  # noqa: F401 - shared fixtures
from tests.subscriptions.receiver import Receiver

IG = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
TOPIC = "https://fhir.cicatrix.org/SubscriptionTopic/"
JSON = {"content-type": "application/fhir+json"}
QUICK = FAST | {"SUBSCRIPTION_BACKOFF_SECONDS": 0.05, "SUBSCRIPTION_BACKOFF_MAX_SECONDS": 0.2,
                "SUBSCRIPTION_POLL_SECONDS": 0.5, "SUBSCRIPTION_LEASE_SECONDS": 10.0,
                "SUBSCRIPTION_TIMEOUT_MAX_SECONDS": 5.0,
                "SUBSCRIPTION_TIMEOUT_SECONDS": 2.0, "SUBSCRIPTION_HEARTBEAT_MIN_SECONDS": 1}


def subscription_settings(database_url: str, ehr_base_url: str, receiver: Receiver,
                          **overrides: Any) -> CareplanSettings:
    return CareplanSettings(DATABASE_URL=database_url, EHR_BASE_URL=ehr_base_url,
                            SUBSCRIPTION_ENDPOINTS=receiver.base, **{**QUICK, **overrides})


def subscription(topic: str, endpoint: str, *, content: str = "id-only", filters: str | None = None,
                 heartbeat: int | None = None, headers: list[str] | None = None) -> dict[str, Any]:
    """A Subscription as a client following the backport IG submits it."""
    criteria: dict[str, Any] = {"criteria": TOPIC + topic}
    if filters:
        criteria["_criteria"] = {"extension": [{"url": IG + "backport-filter-criteria", "valueString": filters}]}
    channel: dict[str, Any] = {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
                               "_payload": {"extension": [{"url": IG + "backport-payload-content",
                                                           "valueCode": content}]}}
    extensions = [{"url": IG + "backport-timeout", "valueUnsignedInt": 5},
                  {"url": IG + "backport-max-count", "valuePositiveInt": 1}]
    if heartbeat:
        extensions.append({"url": IG + "backport-heartbeat-period", "valueUnsignedInt": heartbeat})
    channel["extension"] = extensions
    if headers:
        channel["header"] = headers
    return {"resourceType": "Subscription", "meta": {"profile": [IG + "backport-subscription"]},
            "status": "requested", "reason": "Scheduling learns of new scar care plans", **criteria,
            "channel": channel}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def settings(database_url: str, ehr_sandbox: Any, receiver: Receiver) -> CareplanSettings:
    return subscription_settings(database_url, ehr_sandbox.base_url, receiver)


@pytest.fixture
def api(engine: Engine, settings: CareplanSettings) -> Iterator[Any]:  # noqa: F811 - engine from delivery
    """The careplan app (dispatcher off) on the migrated database, as a TestClient."""
    from services.careplan.app import create_app
    from tests.support.apps import running

    with running(create_app(settings)) as client:
        yield client


def notify(settings: CareplanSettings, engine: Engine, *, timeout: float = 20.0) -> None:  # noqa: F811
    """Run one notifier until no notification is pending or in flight."""
    from services.careplan.delivery.dispatcher import run_until_idle

    async def go() -> None:
        notifier = Notifier(settings, engine)
        try:
            await run_until_idle(notifier, timeout)
        finally:
            await notifier.close()

    asyncio.run(go())


def deliver(settings: CareplanSettings, engine: Engine) -> None:  # noqa: F811
    """Deliver queued plans to the EHR with the subscription finish hook (as the app and `cicatrix dispatch` do)."""
    drain(settings, engine, finish_hooks=[make_delivery_event_hook()])


def subscribe(api: Any, resource: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = api.post("/fhir/Subscription", json=resource, headers=JSON | headers)
    assert response.status_code == 201, response.text
    return response.json()


def row(engine: Engine, subscription_id: str) -> Subscription:  # noqa: F811
    with Session(engine) as session:
        found = session.get(Subscription, subscription_id)
        assert found is not None
        return found


def notifications(engine: Engine, subscription_id: str) -> list[Notification]:  # noqa: F811
    with Session(engine) as session:
        return list(session.exec(select(Notification).where(Notification.subscription_id == subscription_id)
                                 .order_by(Notification.seq)).all())
