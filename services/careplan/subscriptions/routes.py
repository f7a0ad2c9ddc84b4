"""The subscription REST surface of the care-plan service (base /fhir).

    GET    /Basic[?_id=]                  the SubscriptionTopics (backport IG: topics as Basic)
    GET    /Basic/{id}                    one topic
    POST   /Subscription                  create (Subscription.c): `requested`, then `active` after the handshake
    GET    /Subscription[?status=&url=&criteria=&_id=&_count=]
    GET    /Subscription/{id}             read (ETag W/"<version>")
    DELETE /Subscription/{id}             delete: nothing more is sent; later reads answer 410
    GET|POST /Subscription/{id}/$status   SubscriptionStatus (query-status) in a searchset Bundle
    GET|POST /Subscription/{id}/$events   past events by number: eventsSinceNumber, eventsUntilNumber, content
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import Request
from sqlalchemy import func, select, update
from sqlmodel import Session, col
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from services.careplan.leases import PENDING, notify
from services.careplan.settings import careplan_settings
from services.careplan.subscriptions.bundles import Event, notification_bundle, status_bundle
from services.careplan.subscriptions.events import NOTIFY_CHANNEL
from services.careplan.subscriptions.notifier import focus_resource
from services.careplan.subscriptions.resource import (
    CONTENTS,
    check_can_read,
    parse_subscription,
    patient_issue,
    render,
)
from services.careplan.subscriptions.tables import (
    DROPPED,
    EVENT,
    HANDSHAKE,
    NOTIFICATIONS,
    OFF,
    Notification,
    Subscription,
)
from services.careplan.subscriptions.topics import BY_ID, TOPICS, topic_resource
from services.fhir.bundles import ignored_parameter, page_size, rendered_searchset
from services.fhir.compartment import current_access
from services.fhir.conditional import none_match
from services.fhir.deps import ContextDep, SessionDep
from services.fhir.interaction_table import Entry, Handler, Permission
from services.fhir.jsonio import read_json, read_resource
from services.fhir.outcome import BadRequest, Forbidden, Gone, NotFound, Unprocessable
from services.fhir.responses import FhirResponse, etag, http_date
from services.fhir.rest import fhir_base
from services.fhir.store import ResourceStore, as_utc, utcnow

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/"
STATUS_DEFINITION = BACKPORT + "OperationDefinition/backport-subscription-status"
EVENTS_DEFINITION = BACKPORT + "OperationDefinition/backport-subscription-events"
SEARCH_PARAMS = ("_id", "status", "url", "criteria", "_count")
MAX_COUNT = 200
"""Subscriptions per search answer."""


def subscription_entries(store: ResourceStore, *, poke: Callable[[], None] | None = None) -> list[Entry]:
    """Topics are read like knowledge; subscriptions are patient data (services/careplan/security.py), and their
    operations need `Subscription.r`."""

    def headers(row: Subscription) -> dict[str, str]:
        return {"ETag": etag(row.row_version), "Last-Modified": http_date(as_utc(row.updated))}

    def visible(session: Session, request: Request, subscription_id: str) -> Subscription:
        row = session.get(Subscription, subscription_id)
        if row is None:
            raise NotFound(f"Subscription/{subscription_id} is not known")
        issue = patient_issue(row, current_access(request))
        if issue is not None:
            raise Forbidden(f"Subscription/{subscription_id} is {issue.diagnostics}")
        if row.deleted:
            raise Gone(f"Subscription/{subscription_id} was deleted")
        return row

    def search_topics(request: Request, ctx: ContextDep) -> Response:
        """The SubscriptionTopics this service publishes (as the backport IG represents them in R4)."""
        base = fhir_base(request, ctx.settings.BASE_URL)
        wanted = None
        for name, value in parse_qsl(request.url.query, keep_blank_values=True):
            if name == "_id":
                wanted = set(value.split(","))
            elif name not in ("_format", "code"):
                raise BadRequest(f"Basic is searched by _id only here (got {name})", expression=name)
        topics = [t for t in TOPICS if wanted is None or t.id in wanted]
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(topics),
                                  "link": [{"relation": "self", "url": f"{base}/Basic"}]}
        if topics:
            bundle["entry"] = [{"fullUrl": f"{base}/Basic/{t.id}", "resource": topic_resource(t),
                                "search": {"mode": "match"}} for t in topics]
        return FhirResponse(bundle)

    def read_topic(resource_id: str) -> Response:
        """One SubscriptionTopic."""
        topic = BY_ID.get(resource_id)
        if topic is None:
            raise NotFound(f"Basic/{resource_id} is not known (this service serves its SubscriptionTopics as Basic)")
        return FhirResponse(topic_resource(topic), headers={"ETag": etag(1)})

    async def create_subscription(request: Request, session: SessionDep, ctx: ContextDep) -> Response:
        """Subscribe to a topic; the handshake follows, then notifications."""
        resource = await read_resource(request, expected_type="Subscription")
        access = current_access(request)
        requested = await run_in_threadpool(parse_subscription, resource, ctx.settings, access)

        def save() -> Subscription:
            count = session.scalar(select(func.count()).select_from(Subscription)
                                   .where(col(Subscription.deleted).is_(False))) or 0
            most = careplan_settings(ctx.settings).SUBSCRIPTION_MAX_SUBSCRIPTIONS
            if count >= most:
                raise Unprocessable(f"this service keeps at most {most} "
                                    "subscriptions; delete one first", code="business-rule")
            now = utcnow()
            stored = {k: v for k, v in requested.resource.items() if k not in ("id", "meta", "error")}
            profile = {"profile": [p for p in (resource.get("meta") or {}).get("profile") or []]
                       or ["http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription"]}
            row = Subscription(
                id=str(uuid.uuid4()), topic=requested.topic.url, endpoint=requested.endpoint,
                headers=orjson.dumps(requested.headers).decode(), content=requested.content,
                heartbeat_seconds=requested.heartbeat, timeout_seconds=requested.timeout,
                max_count=requested.max_count, filter_patient=requested.filters.get("patient"),
                filter_category=requested.filters.get("category"),
                owner_patient=access.patient if access is not None else None, end_at=requested.end,
                resource=orjson.dumps(stored | {"meta": profile}).decode(), created=now, updated=now)
            session.add(row)
            session.add(Notification(id=str(uuid.uuid4()), subscription_id=row.id, seq=0, kind=HANDSHAKE,
                                     topic=row.topic, occurred=now, window_start=now, next_attempt_at=now,
                                     created=now, updated=now))
            notify(session, NOTIFY_CHANNEL)
            session.commit()
            return row

        row = await run_in_threadpool(save)
        if poke is not None:
            poke()
        base = fhir_base(request, ctx.settings.BASE_URL)
        return FhirResponse(render(row), status_code=201,
                            headers=headers(row) | {"Location": f"{base}/Subscription/{row.id}/_history/"
                                                                f"{row.row_version}"})

    def search_subscriptions(request: Request, session: SessionDep, ctx: ContextDep) -> Response:
        """Subscriptions by `status`, `url` (endpoint), `criteria` (topic) or `_id`."""
        pairs = parse_qsl(request.url.query, keep_blank_values=True)
        stmt = select(Subscription).where(col(Subscription.deleted).is_(False))
        access = current_access(request)
        if access is not None and access.patient is not None:
            stmt = stmt.where(col(Subscription.owner_patient) == access.patient)
        count, warnings = 50, []
        for name, value in pairs:
            if name == "status":
                stmt = stmt.where(col(Subscription.status).in_(value.split(",")))
            elif name == "url":
                stmt = stmt.where(col(Subscription.endpoint) == value)
            elif name == "criteria":
                stmt = stmt.where(col(Subscription.topic) == value)
            elif name == "_id":
                stmt = stmt.where(col(Subscription.id).in_(value.split(",")))
            elif name == "_count":
                count = page_size(value, MAX_COUNT)
            elif name != "_format":
                warnings.append(ignored_parameter(name))
        total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
        rows = session.scalars(stmt.order_by(col(Subscription.created), col(Subscription.id)).limit(count)).all()
        bundle = rendered_searchset(fhir_base(request, ctx.settings.BASE_URL), "Subscription",
                                    [render(row) for row in rows], total=total,
                                    params=[(k, v) for k, v in pairs if k in SEARCH_PARAMS], warnings=warnings)
        return FhirResponse(bundle)

    def read_subscription(resource_id: str, request: Request, session: SessionDep) -> Response:
        """One subscription, with its current status (and error)."""
        row = visible(session, request, resource_id)
        if none_match(request.headers.get("if-none-match"), etag(row.row_version)):
            return Response(status_code=304, headers=headers(row))
        return FhirResponse(render(row), headers=headers(row))

    def delete_subscription(resource_id: str, request: Request, session: SessionDep) -> Response:
        """Stop a subscription: nothing more is sent, what is queued is dropped."""
        row = visible(session, request, resource_id)
        now = utcnow()
        notes = NOTIFICATIONS
        session.execute(update(notes).where(notes.c.subscription_id == row.id, notes.c.state == PENDING)
                        .values(state=DROPPED, finished_at=now, updated=now, last_error="subscription deleted",
                                row_version=notes.c.row_version + 1))
        row.deleted, row.status, row.updated, row.heartbeat_due_at = True, OFF, now, None
        row.row_version += 1
        session.add(row)
        session.commit()
        return Response(status_code=204)

    async def subscription_status(resource_id: str, request: Request, session: SessionDep,
                                  ctx: ContextDep) -> Response:
        """The subscription's status, event count and error (backport $status)."""
        await operation_parameters(request)  # none are defined, but a POST body is still checked as Parameters
        row = await run_in_threadpool(visible, session, request, resource_id)
        return FhirResponse(status_bundle(row, base=fhir_base(request, ctx.settings.BASE_URL)))

    async def subscription_events(resource_id: str, request: Request, session: SessionDep,
                                  ctx: ContextDep) -> Response:
        """Past events by number, to fill a gap a receiver noticed (backport $events)."""
        params = await operation_parameters(request)

        def answer() -> dict[str, Any]:
            row = visible(session, request, resource_id)
            since, until = _number(params, "eventsSinceNumber", 1), _number(params, "eventsUntilNumber", None)
            content = params.get("content") or row.content
            if content not in CONTENTS:
                raise BadRequest("content is empty, id-only or full-resource", expression="content")
            if content == "full-resource":
                check_can_read(current_access(request), BY_ID[row.topic.rsplit("/", 1)[-1]].resource)
            stmt = select(Notification).where(col(Notification.subscription_id) == row.id,
                                              col(Notification.kind) == EVENT, col(Notification.seq) >= since)
            if until is not None:
                stmt = stmt.where(col(Notification.seq) <= until)
            most = careplan_settings(ctx.settings).SUBSCRIPTION_EVENTS_MAX
            found = session.scalars(stmt.order_by(col(Notification.seq)).limit(most))
            events = []
            for note in found:
                event = Event(note.seq, as_utc(note.occurred), note.focus_type, note.focus_id, note.focus_version,
                              note.interaction)
                if content == "full-resource":
                    event.resource = focus_resource(session, store, ctx.settings, event)
                events.append(event)
            return notification_bundle(row, "query-event", events, base=fhir_base(request, ctx.settings.BASE_URL),
                                       content=content)

        return FhirResponse(await run_in_threadpool(answer))

    def operation(name: str, handler: Handler, method: str, definition: str, documentation: str) -> Entry:
        return Entry(name, handler, ("Subscription",), method=method, instance=True, permission=Permission("r"),
                     definition=definition, documentation=documentation, tag="subscriptions")

    status, events = "The subscription's status, event count and error", "Past events by event number"
    return [Entry("read", read_topic, ("Basic",), tag="subscriptions"),
            Entry("search-type", search_topics, ("Basic",), tag="subscriptions"),
            Entry("create", create_subscription, ("Subscription",), tag="subscriptions"),
            Entry("read", read_subscription, ("Subscription",), tag="subscriptions"),
            Entry("search-type", search_subscriptions, ("Subscription",), tag="subscriptions"),
            Entry("delete", delete_subscription, ("Subscription",), tag="subscriptions"),
            operation("$status", subscription_status, "GET", STATUS_DEFINITION, status),
            operation("$status", subscription_status, "POST", STATUS_DEFINITION, status),
            operation("$events", subscription_events, "GET", EVENTS_DEFINITION, events),
            operation("$events", subscription_events, "POST", EVENTS_DEFINITION, events)]


async def operation_parameters(request: Request) -> dict[str, str]:
    """An operation's parameters: the query's, plus a POSTed Parameters body's (string and code values)."""
    params = dict(parse_qsl(request.url.query))
    if request.method == "POST" and request.headers.get("content-length") != "0":
        params |= _parameters(await read_json(request))
    return params


def _parameters(body: Any) -> dict[str, str]:
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise BadRequest("the body of $events is a Parameters resource", expression="resourceType")
    found = {}
    for parameter in body.get("parameter") or []:
        name = parameter.get("name") if isinstance(parameter, dict) else None
        value = parameter.get("valueString", parameter.get("valueCode")) if isinstance(parameter, dict) else None
        if isinstance(name, str) and isinstance(value, str):
            found[name] = value
    return found


def _number(params: dict[str, str], name: str, default: int | None) -> int | None:
    value = params.get(name)
    if value is None:
        return default
    if not value.isdigit() or len(value) > 18:
        raise BadRequest(f"{name} is an event number (a non-negative integer)", expression=name)
    return int(value)
