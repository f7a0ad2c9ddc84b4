"""The notifier as real `cicatrix dispatch` processes: SIGKILL mid-notification, and several workers on PostgreSQL.

The receiver holds its answers back so that notifications are surely in flight when the signal
arrives; like a real endpoint it goes on receiving requests whose sender died. Delivery is at least
once: a notification in flight at the kill may arrive twice, and its event number shows it.
"""

from __future__ import annotations

import signal
from collections import Counter

import pytest
from sqlmodel import Session, select

from services.careplan.subscriptions.tables import Notification
from tests.delivery.test_processes import dispatch, wait_for
from tests.subscriptions.conftest import notify, row, subscribe, subscription, subscription_settings
from tests.subscriptions.test_notifications import plan

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

PLANS = 8


def worker_settings(receiver) -> dict[str, str]:
    """Short leases (a killed worker's notifications and deliveries come back quickly), each above its timeout."""
    return {"SUBSCRIPTION_ENDPOINTS": receiver.base, "SUBSCRIPTION_BACKOFF_SECONDS": "0.05",
            "SUBSCRIPTION_BACKOFF_MAX_SECONDS": "0.2", "SUBSCRIPTION_POLL_SECONDS": "0.5",
            "SUBSCRIPTION_TIMEOUT_SECONDS": "2", "SUBSCRIPTION_TIMEOUT_MAX_SECONDS": "2",
            "SUBSCRIPTION_LEASE_SECONDS": "3", "SUBSCRIPTION_BATCH_SIZE": "4",
            "DELIVERY_LEASE_SECONDS": "3", "EHR_TIMEOUT_SECONDS": "2"}


def first_seen_order(receiver, subscription_id: str) -> tuple[list[int], Counter[int]]:
    numbers = [n for got in receiver.events(subscription_id) for n in got.event_numbers]
    order: list[int] = []
    for number in numbers:
        if number not in order:
            order.append(number)
    return order, Counter(numbers)


def prepared(api, engine, settings, receiver, subscriptions: int) -> list[str]:
    ids = [subscribe(api, subscription("careplan-created", receiver.url(f"s{i}")))["id"]
           for i in range(subscriptions)]
    notify(settings, engine)
    assert {row(engine, i).status for i in ids} == {"active"}
    for _ in range(PLANS):
        plan(api, engine)
    return ids


def in_flight(engine) -> Counter[str]:
    with Session(engine) as session:
        return Counter(n.subscription_id for n in session.exec(select(Notification)
                                                               .where(Notification.state == "sending")))


def test_sigkill_mid_notification_loses_nothing_and_repeats_only_what_was_in_flight(
        api, engine, settings, database_url, ehr_sandbox, receiver):
    ids = prepared(api, engine, settings, receiver, 4)
    receiver.delay = 0.15
    # a held answer must not time out between its arrival and the kill, even on a loaded machine
    worker = dispatch(database_url, ehr_sandbox.base_url,
                      **worker_settings(receiver) | {"SUBSCRIPTION_TIMEOUT_SECONDS": "6",
                                                     "SUBSCRIPTION_TIMEOUT_MAX_SECONDS": "6",
                                                     "SUBSCRIPTION_LEASE_SECONDS": "7"})
    try:
        wait_for(lambda: len(receiver.events()) >= 6, 30, "the first notifications")
        receiver.hold()
        wait_for(lambda: receiver.held and in_flight(engine), 30, "a notification in flight")
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
        receiver.delay = 0
        receiver.release()
    held = in_flight(engine)
    assert held, "the kill should leave claimed notifications behind"

    # a longer lease now: on a loaded machine a slow attempt must not be taken over by this very worker
    restarted = dispatch(database_url, ehr_sandbox.base_url, drain=True,
                         **worker_settings(receiver) | {"SUBSCRIPTION_LEASE_SECONDS": "10"})
    assert restarted.wait(timeout=120) == 0

    for subscription_id in ids:
        order, counts = first_seen_order(receiver, subscription_id)
        assert order == list(range(1, PLANS + 1))  # nothing lost, in order
        repeated = sum(n - 1 for n in counts.values())
        assert repeated <= held[subscription_id] <= 1  # only the one in flight may arrive again
    with Session(engine) as session:
        assert {n.state for n in session.exec(select(Notification))} == {"completed"}


def test_several_workers_share_the_notifications_on_postgresql(pg_engine, ehr_sandbox, receiver):
    from services.careplan.app import create_app
    from tests.support.apps import running

    database_url, engine = pg_engine
    settings = subscription_settings(database_url, ehr_sandbox.base_url, receiver)
    with running(create_app(settings)) as api:
        ids = prepared(api, engine, settings, receiver, 12)
    receiver.delay = 0.01
    workers = [dispatch(database_url, ehr_sandbox.base_url, drain=True, **worker_settings(receiver))
               for _ in range(3)]
    for worker in workers:
        assert worker.wait(timeout=120) == 0

    for subscription_id in ids:
        order, counts = first_seen_order(receiver, subscription_id)
        assert order == list(range(1, PLANS + 1))
        assert set(counts.values()) == {1}
