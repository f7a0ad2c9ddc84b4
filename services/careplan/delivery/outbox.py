"""The transactional outbox: one row per CarePlan version to deliver to the EHR.

`enqueue` is a plan hook (see `services.careplan.generate.PlanHook`): the plan
repository calls it inside the transaction that writes the CarePlan version, so the
plan and its delivery row commit together or not at all; a crash between the two
is impossible by construction. On PostgreSQL the same transaction sends
`NOTIFY careplan_delivery`, which PostgreSQL delivers only on commit, waking the
dispatchers; an in-process dispatcher is also poked directly after the commit.

A row is a delivery's whole state (the dispatcher keeps nothing in memory that a
restart would lose) and the FHIR Task clients read is rendered from it
(`services.careplan.tasks`).

    pending ──claim──▶ sending ──▶ completed
       ▲                  │ ├───▶ failed ──$retry──▶ pending
       └──retry / release─┘ └───▶ cancelled (a later version reached the EHR first)

Deliveries of one plan go out in version order: a version is not claimed while an
earlier one of the same plan is pending or sending.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Index, Text, UniqueConstraint, bindparam, event, insert, select
from sqlmodel import Field, Session

from services.careplan.leases import (
    OPEN_STATES,
    PENDING,
    SENDING,
    LeaseColumns,
    column_defaults,
    notify,
    pg_notify,
)
from services.fhir.loopdb import LoopStatement, LoopTransaction
from services.fhir.store import StoredResource, utcnow
from services.fhir.tables import core_table

NOTIFY_CHANNEL = "careplan_delivery"

COMPLETED, FAILED, CANCELLED = "completed", "failed", "cancelled"
__all__ = ["OPEN_STATES", "PENDING", "SENDING", "COMPLETED", "FAILED", "CANCELLED", "Delivery", "new_delivery",
           "delivery_row", "EnqueueHook", "NOTIFY_CHANNEL"]


class Delivery(LeaseColumns, table=True):
    """One CarePlan version on its way to the EHR (and, rendered, one FHIR Task).

    The lease columns are the leased queue's (`LeaseColumns`); `ambiguous` here means the EHR may have
    applied an earlier attempt, so the next one searches the EHR before sending again."""

    __tablename__ = "careplan_delivery"
    __table_args__ = (
        UniqueConstraint("careplan_id", "careplan_version", name="uq_careplan_delivery_version"),
        Index("ix_careplan_delivery_due", "state", "next_attempt_at"),
    )

    id: str = Field(primary_key=True, max_length=64)
    careplan_id: str = Field(max_length=64)
    careplan_version: int
    subject: str | None = Field(default=None, max_length=256)
    kind: str = Field(max_length=16)
    """create (first version) or update; informational: what is sent depends on what the EHR already has."""
    shape: str | None = Field(default=None, max_length=16)
    outcome: str | None = Field(default=None, sa_type=Text)
    """The EHR's OperationOutcome (JSON) of the last rejection."""
    ehr_type: str | None = Field(default=None, max_length=64)
    ehr_id: str | None = Field(default=None, max_length=128)
    ehr_version: str | None = Field(default=None, max_length=64)
    ehr_outputs: str | None = Field(default=None, sa_type=Text)
    """JSON list of what the EHR holds because of this delivery: "Type/id/_history/vid"."""
    readback: str | None = Field(default=None, sa_type=Text)
    """JSON list of elements the EHR dropped (empty list: identical), or null when not read back."""

    def outputs(self) -> list[str]:
        return orjson.loads(self.ehr_outputs) if self.ehr_outputs else []

    def dropped_elements(self) -> list[str] | None:
        return orjson.loads(self.readback) if self.readback is not None else None


DELIVERIES = core_table(Delivery)
_INSERT = insert(DELIVERIES).values({column.name: bindparam(column.name) for column in DELIVERIES.c})
_QUEUE_ON_LOOP = LoopStatement(select(pg_notify(NOTIFY_CHANNEL)).add_cte(_INSERT.cte("queued")))
"""`_INSERT` and the notification, as one statement for a transaction on the event loop."""
_DEFAULTS = column_defaults(Delivery)


def new_delivery(plan: StoredResource, previous: StoredResource | None, *, now: datetime | None = None) -> Delivery:
    return Delivery(**delivery_row(plan, previous, now=now))


def delivery_row(plan: StoredResource, previous: StoredResource | None, *,
                 now: datetime | None = None) -> dict[str, Any]:
    """The outbox row queuing one plan version, every column given (`Delivery`'s defaults where it says nothing):
    a plain row, as the enqueue hook writes one for every plan version."""
    now = now or utcnow()
    subject = (plan.parsed().get("subject") or {}).get("reference")
    return _DEFAULTS | {"id": str(uuid.uuid4()), "careplan_id": plan.id, "careplan_version": plan.version_id,
                        "subject": subject if isinstance(subject, str) else None,
                        "kind": "create" if previous is None else "update", "created": now, "updated": now,
                        "window_start": now, "next_attempt_at": now}


class EnqueueHook:
    """The plan hook that queues every CarePlan version, in a session or on the event loop; `on_commit` wakes an
    in-process dispatcher."""

    def __init__(self, on_commit: Callable[[], None] | None = None) -> None:
        self.on_commit = on_commit

    def __call__(self, session: Session, plan: StoredResource, previous: StoredResource | None) -> None:
        session.execute(_INSERT, delivery_row(plan, previous))
        notify(session, NOTIFY_CHANNEL)
        if self.on_commit is not None:
            on_commit = self.on_commit
            event.listen(session, "after_commit", lambda _session: on_commit(), once=True)

    async def on_loop(self, transaction: LoopTransaction, plan: StoredResource,
                      previous: StoredResource | None) -> None:
        await transaction.execute(_QUEUE_ON_LOOP, delivery_row(plan, previous))
        if self.on_commit is not None:
            transaction.after_commit(self.on_commit)
