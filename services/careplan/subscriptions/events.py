"""Topic events into the notification outbox, in the transaction of the change that causes them.

Two hooks feed it:

- the plan hook (`services.careplan.generate.PlanHook`), called by the plan repository in the
  transaction that writes a CarePlan version: `careplan-created`, `careplan-status-changed`;
- the delivery finish hook (`services.careplan.delivery.recording.FinishHook`), called in the
  transaction that records a delivery's final state: `careplan-delivery-completed` / `-failed`.

One event is fanned out at once to every matching subscription: one UPDATE bumps each one's
`events_since_start` (locking the rows in id order on PostgreSQL, so concurrent writers
queue instead of deadlocking, and each subscription's numbers follow its commit order) and
returns the numbers; one INSERT writes a notification row per subscription. Only `active`
subscriptions that have not ended receive events; how many exist is bounded by
SUBSCRIPTION_MAX_SUBSCRIPTIONS. Nothing matches: one indexed UPDATE that changes nothing. In a
transaction on the event loop the UPDATE, the INSERT and the NOTIFY are one statement, which the
transaction need not wait for.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from psycopg import AsyncCursor
from psycopg.rows import TupleRow
from sqlalchemy import (
    ARRAY,
    String,
    Update,
    and_,
    any_,
    bindparam,
    cast,
    event,
    func,
    insert,
    literal_column,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection
from sqlmodel import Session

from services.careplan.delivery.outbox import Delivery
from services.careplan.leases import column_defaults, notify, pg_notify
from services.careplan.subscriptions.tables import ACTIVE, EVENT, NOTIFICATIONS, SUBSCRIPTIONS, Notification
from services.careplan.subscriptions.topics import Topic, category_tokens, delivery_topic, plan_topics
from services.careplan.tables import CareplanResourceVersion
from services.fhir.loopdb import LoopStatement, LoopTransaction
from services.fhir.store import StoredResource, utcnow
from services.fhir.tables import core_table

NOTIFY_CHANNEL = "careplan_subscription"
_PLAN_VERSIONS = core_table(CareplanResourceVersion)


def _bump(postgresql: bool) -> Update:
    """Count one more event on every matching subscription, returning (id, its event number): made once, with
    the event's values as parameters, since every plan write runs it. PostgreSQL locks the chosen rows (SQLite
    locks the whole file) and takes the categories as one array."""
    subs = SUBSCRIPTIONS
    categories = bindparam("event_categories", type_=ARRAY(String)) if postgresql \
        else bindparam("event_categories", expanding=True)
    matching = and_(
        subs.c.topic == bindparam("event_topic"), subs.c.status == ACTIVE, subs.c.deleted.is_(False),
        or_(subs.c.end_at.is_(None), subs.c.end_at > bindparam("event_occurred")),
        or_(subs.c.filter_patient.is_(None), subs.c.filter_patient == bindparam("event_patient")),
        or_(subs.c.filter_category.is_(None),
            subs.c.filter_category == any_(categories) if postgresql else subs.c.filter_category.in_(categories)),
    )
    chosen = select(subs.c.id).where(matching).order_by(subs.c.id)
    if postgresql:
        chosen = chosen.with_for_update()
    return (update(subs).where(subs.c.id.in_(chosen.scalar_subquery()))
            .values(events_since_start=subs.c.events_since_start + 1)
            .returning(subs.c.id, subs.c.events_since_start))


_BUMP = {True: _bump(postgresql=True), False: _bump(postgresql=False)}
"""By whether the database is PostgreSQL."""
_NOTIFICATION_DEFAULTS = column_defaults(Notification)


def _queue_on_loop() -> LoopStatement:
    """`record_event` as one statement for a transaction on the event loop (PostgreSQL): `_BUMP`, a notification
    for each subscription it bumps (the event's `_Event.template` with the row's own id, subscription and number),
    and the NOTIFY if there was any. Its rowcount says whether anything was queued."""
    bumped = _BUMP[True].cte("bumped")
    names = list(NOTIFICATIONS.c.keys())
    template = func.jsonb_populate_record(literal_column(f'NULL::"{NOTIFICATIONS.name}"'),
                                          bindparam("template", type_=JSONB)).table_valued(*names).alias("template")
    own = {"id": cast(func.gen_random_uuid(), String), "subscription_id": bumped.c.id,
           "seq": bumped.c.events_since_start}
    rows = select(*(own[name] if name in own else template.c[name] for name in names)).select_from(
        bumped.join(template, true()))
    queued = insert(NOTIFICATIONS).from_select(names, rows).cte("queued")
    return LoopStatement(select(pg_notify(NOTIFY_CHANNEL)).select_from(bumped).limit(1).add_cte(queued))


_QUEUE_ON_LOOP = _queue_on_loop()


@dataclass(frozen=True)
class _Event:
    """One topic event, to be queued for every subscription it matches."""

    topic: Topic
    focus_type: str
    focus_id: str
    focus_version: int | None
    interaction: str
    patient: str | None
    categories: list[str]
    occurred: datetime

    def matching(self) -> dict[str, Any]:
        """The parameters of `_BUMP`."""
        return {"event_topic": self.topic.url, "event_occurred": self.occurred, "event_patient": self.patient or "",
                "event_categories": self.categories or [""]}

    def template(self) -> dict[str, Any]:
        """The columns of this event's notification that every subscription's has alike: all but its id,
        subscription and number."""
        now = utcnow()
        return _NOTIFICATION_DEFAULTS | {
            "kind": EVENT, "topic": self.topic.url, "focus_type": self.focus_type, "focus_id": self.focus_id,
            "focus_version": self.focus_version, "interaction": self.interaction, "occurred": self.occurred,
            "window_start": now, "next_attempt_at": now, "created": now, "updated": now}

    def notifications(self, bumped: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        """One notification row for each (subscription id, event number) `_BUMP` returned."""
        template = self.template()
        return [template | {"id": str(uuid.uuid4()), "subscription_id": sub_id, "seq": number}
                for sub_id, number in bumped]


def record_event(connection: Connection, event: _Event) -> int:
    """Queue one event for every matching subscription; returns how many."""
    bumped = connection.execute(_BUMP[connection.dialect.name == "postgresql"], event.matching()).all()
    if not bumped:
        return 0
    connection.execute(insert(NOTIFICATIONS), event.notifications(bumped))
    notify(connection, NOTIFY_CHANNEL)
    return len(bumped)


async def record_event_on_loop(transaction: LoopTransaction, event: _Event) -> AsyncCursor[TupleRow]:
    """`record_event` in a transaction on the event loop, as one statement that waits for nothing: once committed,
    its cursor's rowcount says whether any subscription was notified."""
    return await transaction.execute(_QUEUE_ON_LOOP, event.matching() | {
        "template": orjson.dumps(event.template()).decode()})


def _subject(resource: dict[str, Any]) -> str | None:
    reference = (resource.get("subject") or {}).get("reference")
    return reference if isinstance(reference, str) else None


class PlanEventHook:
    """The plan hook: a new plan or a status change is an event; `poke` wakes an in-process notifier."""

    def __init__(self, poke: Callable[[], None] | None = None) -> None:
        self.poke = poke

    def __call__(self, session: Session, plan: StoredResource, previous: StoredResource | None) -> None:
        queued = sum(record_event(session.connection(), item) for item in self._events(plan, previous))
        if queued and self.poke is not None:
            poke = self.poke
            event.listen(session, "after_commit", lambda _session: poke(), once=True)

    async def on_loop(self, transaction: LoopTransaction, plan: StoredResource,
                      previous: StoredResource | None) -> None:
        recorded = [await record_event_on_loop(transaction, item) for item in self._events(plan, previous)]
        poke = self.poke
        if recorded and poke is not None:
            def poke_if_queued() -> None:
                if any(cursor.rowcount > 0 for cursor in recorded):
                    poke()

            transaction.after_commit(poke_if_queued)

    @staticmethod
    def _events(plan: StoredResource, previous: StoredResource | None) -> list[_Event]:
        current = plan.parsed()
        return [_Event(topic, focus_type="CarePlan", focus_id=plan.id, focus_version=plan.version_id,
                       interaction="create" if previous is None else "update", patient=_subject(current),
                       categories=category_tokens(current), occurred=plan.last_updated)
                for topic in plan_topics(current, previous.parsed() if previous is not None else None)]


def make_delivery_event_hook(poke: Callable[[], None] | None = None) -> Callable[[Connection, Delivery, str], None]:
    """The delivery finish hook: a delivery that completed or failed is an event about its Task."""

    def on_delivery(connection: Connection, delivery: Delivery, state: str) -> None:
        topic = delivery_topic(state)
        if topic is None or not _anyone_listening(connection, topic):
            return
        queued = record_event(connection, _Event(topic, focus_type="Task", focus_id=delivery.id, focus_version=None,
                                                 interaction="update", patient=delivery.subject,
                                                 categories=_plan_categories(connection, delivery),
                                                 occurred=utcnow()))
        if queued and poke is not None:
            # SQLite: the notifier's claim waits for this transaction's write lock; PostgreSQL: NOTIFY wakes it
            event.listen(connection, "commit", lambda _connection: poke(), once=True)

    return on_delivery


def _anyone_listening(connection: Connection, topic: Topic) -> bool:
    """Whether an active subscription has the topic; asked once per topic in a transaction that records the
    results of several deliveries (the dispatcher writes a batch of them in one)."""
    transaction = connection.get_transaction()
    known = connection.info.get(_LISTENING)
    if known is None or known[0] is not transaction:
        known = connection.info[_LISTENING] = (transaction, {})
    answers: dict[str, bool] = known[1]
    if topic.url not in answers:
        subs = SUBSCRIPTIONS
        answers[topic.url] = connection.execute(
            select(subs.c.id).where(subs.c.topic == topic.url, subs.c.status == ACTIVE).limit(1)).first() is not None
    return answers[topic.url]


_LISTENING = "cicatrix.subscriptions.listening"
"""connection.info key: (the transaction, {topic url: whether anyone listens}) for `_anyone_listening`."""


def _plan_categories(connection: Connection, delivery: Delivery) -> list[str]:
    versions = _PLAN_VERSIONS
    content = connection.execute(
        select(versions.c.content).where(versions.c.resource_type == "CarePlan",
                                         versions.c.id == delivery.careplan_id,
                                         versions.c.version_id == delivery.careplan_version)).scalar()
    return category_tokens(orjson.loads(content)) if content else []
