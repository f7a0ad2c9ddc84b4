"""Notifications for each topic, with filters and each payload; gaps and $events; failing endpoints.

Plans are written through the real plan repository with the app's plan hooks (outbox and
subscription events in one transaction); deliveries through the real dispatcher against the
EHR sandbox; notifications are received over HTTP by the test receiver.
"""

from __future__ import annotations

import pytest

from tests.delivery.factories import store_plan
from tests.subscriptions.conftest import (
    JSON,
    deliver,
    notifications,
    notify,
    row,
    subscribe,
    subscription,
    subscription_settings,
)

pytestmark = pytest.mark.sandbox

SCAR_CARE = [{"coding": [{"system": "https://fhir.cicatrix.org/CodeSystem/scar-care", "code": "scar-therapy-plan"}]}]


def active(api, engine, settings, resources) -> list[str]:
    """Create the subscriptions and run their handshakes; returns their ids."""
    ids = [subscribe(api, resource)["id"] for resource in resources]
    notify(settings, engine)
    assert {row(engine, i).status for i in ids} == {"active"}
    return ids


def plan(api, engine, **kwargs):
    return store_plan(engine, hooks=api.app.state.ctx.extras["plan_hooks"], category=SCAR_CARE, **kwargs)


def test_plan_created_reaches_the_subscriptions_whose_filters_match_with_their_payload(
        api, engine, settings, receiver, r4_validator):
    ids = active(api, engine, settings, [
        subscription("careplan-created", receiver.url("p1-id-only"), filters="CarePlan?patient=Patient/p1"),
        subscription("careplan-created", receiver.url("p2-full"), content="full-resource",
                     filters="CarePlan?patient=Patient/p2"),
        subscription("careplan-created", receiver.url("category-empty"), content="empty",
                     filters="CarePlan?category=https://fhir.cicatrix.org/CodeSystem/scar-care|scar-therapy-plan"),
        subscription("careplan-created", receiver.url("other-category"), filters="CarePlan?category=wound-care"),
        subscription("careplan-status-changed", receiver.url("status"))])

    stored = plan(api, engine, subject="Patient/p2")
    notify(settings, engine)

    by_path = {got.path: got for got in receiver.events()}
    assert sorted(by_path) == ["/category-empty", "/p2-full"]
    for got in by_path.values():
        r4_validator.assert_valid(got.bundle)
        assert got.bundle["type"] == "history"
        assert got.event_numbers == [1]
        assert got.parameter("events-since-subscription-start") == "1"
    full = by_path["/p2-full"]
    assert full.focus == [f"http://127.0.0.1:8082/fhir/CarePlan/{stored.id}/_history/1"]
    [entry] = full.bundle["entry"][1:]
    assert entry["resource"]["id"] == stored.id
    assert entry["request"] == {"method": "POST", "url": "CarePlan"}
    empty = by_path["/category-empty"]
    assert empty.focus == [] and len(empty.bundle["entry"]) == 1
    assert [row(engine, i).events_since_start for i in ids] == [0, 1, 1, 0, 0]


def test_status_change_reaches_the_status_topic_with_the_new_version(api, engine, settings, receiver,
                                                                      r4_validator):
    active(api, engine, settings, [subscription("careplan-status-changed", receiver.url(),
                                                filters="CarePlan?patient=Patient/p1")])
    stored = plan(api, engine, subject="Patient/p1")
    current = api.get(f"/fhir/CarePlan/{stored.id}").json()
    updated = api.put(f"/fhir/CarePlan/{stored.id}", json=current | {"status": "active"},
                      headers=JSON | {"If-Match": 'W/"1"'})
    assert updated.status_code == 200, updated.text

    notify(settings, engine)

    [got] = receiver.events()
    r4_validator.assert_valid(got.bundle)
    assert got.event_numbers == [1]
    assert got.focus == [f"http://127.0.0.1:8082/fhir/CarePlan/{stored.id}/_history/2"]
    assert got.bundle["entry"][1]["request"] == {"method": "PUT", "url": f"CarePlan/{stored.id}"}


def test_delivery_completed_and_failed_reach_their_topics_with_the_task(api, engine, settings, receiver,
                                                                         ehr_sandbox, r4_validator):
    active(api, engine, settings, [
        subscription("careplan-delivery-completed", receiver.url("completed"), content="full-resource"),
        subscription("careplan-delivery-failed", receiver.url("failed"), content="full-resource",
                     filters="Task?patient=Patient/p1&category=scar-therapy-plan")])
    ehr_sandbox.queue_fault(action="status", status=400, match={"method": "POST", "path": "/fhir"})
    rejected = plan(api, engine, subject="Patient/p1")
    deliver(settings, engine)
    accepted = plan(api, engine, subject="Patient/p1")
    deliver(settings, engine)

    notify(settings, engine)

    by_path = {got.path: got for got in receiver.events()}
    assert sorted(by_path) == ["/completed", "/failed"]
    for path, got in by_path.items():
        r4_validator.assert_valid(got.bundle)
        task = got.bundle["entry"][1]["resource"]
        assert task["resourceType"] == "Task"
        assert task["status"] == path.strip("/")
        assert task["focus"]["reference"] == f"CarePlan/{(rejected if path == '/failed' else accepted).id}"


def test_a_gap_in_event_numbers_is_filled_by_events(api, engine, settings, receiver, r4_validator):
    [subscription_id] = active(api, engine, settings, [subscription("careplan-created", receiver.url())])
    plans = [plan(api, engine) for _ in range(3)]
    receiver.lose(2)  # accepted, then lost on the receiver's side

    notify(settings, engine)

    numbers = [n for got in receiver.events() for n in got.event_numbers]
    assert numbers == [1, 3]  # the receiver sees the gap
    missing = api.get(f"/fhir/Subscription/{subscription_id}/$events",
                      params={"eventsSinceNumber": "2", "eventsUntilNumber": "2"})
    assert missing.status_code == 200
    bundle = missing.json()
    r4_validator.assert_valid(bundle)
    assert bundle["type"] == "history"
    status = {p["name"]: p for p in bundle["entry"][0]["resource"]["parameter"]}
    assert status["type"]["valueCode"] == "query-event"
    assert status["events-since-subscription-start"]["valueString"] == "3"
    [event] = [p for p in bundle["entry"][0]["resource"]["parameter"] if p["name"] == "notification-event"]
    focus = next(part for part in event["part"] if part["name"] == "focus")
    assert focus["valueReference"]["reference"].endswith(f"/CarePlan/{plans[1].id}/_history/1")
    everything = api.post(f"/fhir/Subscription/{subscription_id}/$events", headers=JSON, json={
        "resourceType": "Parameters", "parameter": [{"name": "content", "valueCode": "full-resource"}]}).json()
    r4_validator.assert_valid(everything)
    assert [e["resource"]["id"] for e in everything["entry"][1:]] == [p.id for p in plans]


def test_an_endpoint_down_then_up_gets_every_event_once_in_order(api, engine, settings, receiver):
    [subscription_id] = active(api, engine, settings, [subscription("careplan-created", receiver.url())])
    for _ in range(3):
        plan(api, engine)
    receiver.answer(503, times=3, headers={"Retry-After": "0"})

    notify(settings, engine)

    assert [n for got in receiver.events() for n in got.event_numbers] == [1, 2, 3]
    rows = notifications(engine, subscription_id)
    assert [(n.seq, n.state) for n in rows] == [(0, "completed"), (1, "completed"), (2, "completed"),
                                                (3, "completed")]
    assert rows[1].attempts == 4


def test_an_endpoint_down_for_good_moves_only_its_subscription_to_error(api, engine, database_url,
                                                                        ehr_sandbox, receiver, r4_validator):
    settings = subscription_settings(database_url, ehr_sandbox.base_url, receiver, SUBSCRIPTION_MAX_ATTEMPTS=3)
    failing, healthy = active(api, engine, settings, [subscription("careplan-created", receiver.url("down")),
                                                      subscription("careplan-created", receiver.url("up"))])
    receiver.fail("down", 500)
    stored = plan(api, engine)

    notify(settings, engine)
    deliver(settings, engine)

    assert [got.path for got in receiver.events()] == ["/up"]
    assert row(engine, failing).status == "error"
    assert row(engine, healthy).status == "active"
    status = api.get(f"/fhir/Subscription/{failing}/$status").json()
    r4_validator.assert_valid(status)
    parameters = {p["name"]: p for p in status["entry"][0]["resource"]["parameter"]}
    assert parameters["status"]["valueCode"] == "error"
    error = parameters["error"]["valueCodeableConcept"]["text"]
    assert "gave up after 3 attempt(s): the endpoint answered 500" in error
    assert api.get(f"/fhir/Subscription/{failing}").json()["error"].startswith("notification 1")
    tasks = api.get("/fhir/Task", params={"focus": f"CarePlan/{stored.id}"}).json()
    assert tasks["entry"][0]["resource"]["status"] == "completed"  # plan delivery went on regardless


def test_redirects_are_not_followed(api, engine, settings, receiver):
    [subscription_id] = [subscribe(api, subscription("careplan-created", receiver.url()))["id"]]
    receiver.answer(302, headers={"Location": "http://127.0.0.1:1/elsewhere"})

    notify(settings, engine)

    assert receiver.attempts == 1
    assert row(engine, subscription_id).status == "error"
    assert "redirects are not followed" in (row(engine, subscription_id).error or "")


def test_an_idle_active_subscription_gets_heartbeats(api, engine, settings, receiver, r4_validator):
    import asyncio

    from services.careplan.subscriptions.notifier import Notifier

    active(api, engine, settings, [subscription("careplan-created", receiver.url(), heartbeat=1)])

    async def run_for(seconds: float) -> None:
        notifier = Notifier(settings, engine)
        task = asyncio.create_task(notifier.run())
        await asyncio.sleep(seconds)
        notifier.stop()
        await task
        await notifier.close()

    asyncio.run(run_for(2.6))

    beats = receiver.of_kind("heartbeat")
    assert 1 <= len(beats) <= 3
    r4_validator.assert_valid(beats[0].bundle)
    assert beats[0].parameter("events-since-subscription-start") == "0"
