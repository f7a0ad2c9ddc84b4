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

import orjson
from sqlalchemy import Index, Text, UniqueConstraint, event, insert
from sqlmodel import Field, Session

from services.careplan.leases import OPEN_STATES, PENDING, SENDING, LeaseColumns, notify
from services.fhir.store import StoredResource, utcnow
from services.fhir.tables import core_table

NOTIFY_CHANNEL = "careplan_delivery"

COMPLETED, FAILED, CANCELLED = "completed", "failed", "cancelled"
__all__ = ["OPEN_STATES", "PENDING", "SENDING", "COMPLETED", "FAILED", "CANCELLED", "Delivery", "new_delivery",
           "make_enqueue_hook", "NOTIFY_CHANNEL"]


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


def new_delivery(plan: StoredResource, previous: StoredResource | None, *, now: datetime | None = None) -> Delivery:
    now = now or utcnow()
    subject = (plan.parsed().get("subject") or {}).get("reference")
    return Delivery(id=str(uuid.uuid4()), careplan_id=plan.id, careplan_version=plan.version_id,
                    subject=subject if isinstance(subject, str) else None,
                    kind="create" if previous is None else "update", created=now, updated=now, window_start=now,
                    next_attempt_at=now)


def make_enqueue_hook(on_commit: Callable[[], None] | None = None) -> Callable[[Session, StoredResource,
                                                                                StoredResource | None], None]:
    """The plan hook that queues every CarePlan version; `on_commit` wakes an in-process dispatcher."""

    def enqueue(session: Session, plan: StoredResource, previous: StoredResource | None) -> None:
        session.execute(insert(DELIVERIES).values(new_delivery(plan, previous).model_dump()))
        notify(session, NOTIFY_CHANNEL)
        if on_commit is not None:
            event.listen(session, "after_commit", lambda _session: on_commit(), once=True)

    return enqueue
