"""The subscription tables: the subscriptions themselves and their notification outbox.

`Subscription` rows hold what a client asked for (its R4 Subscription, as submitted)
plus what the server keeps about it: status, error, the event counter
(`events_since_start`) and when the next heartbeat is due. A subscription's FHIR
resource is rendered from the row on every read.

`Notification` rows are the outbox: one per event per subscription (and one for the
handshake, `seq` 0), written in the transaction of the change that causes the event,
and worked off by the notifier under the leased-queue rules (`services.careplan.leases`):
one at a time per subscription, in `seq` order. A notification row is also the event's
record: `$events` renders past events from it.
"""

from __future__ import annotations

from datetime import datetime

import orjson
from sqlalchemy import DateTime, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from services.careplan.leases import LeaseColumns
from services.fhir.tables import core_table

REQUESTED, ACTIVE, ERROR, OFF = "requested", "active", "error", "off"
HANDSHAKE, EVENT = "handshake", "event-notification"
SENT, FAILED, DROPPED = "completed", "failed", "cancelled"
"""Final notification states: sent; given up on (the subscription went to error); dropped with its subscription."""


class Subscription(SQLModel, table=True):
    __tablename__ = "careplan_subscription"
    __table_args__ = (Index("ix_careplan_subscription_topic", "topic", "status"),)

    id: str = Field(primary_key=True, max_length=64)
    topic: str = Field(max_length=256)
    status: str = Field(default=REQUESTED, max_length=16)
    error: str | None = Field(default=None, sa_type=Text)
    endpoint: str = Field(sa_type=Text)
    headers: str = Field(default="[]", sa_type=Text)
    """JSON list of "Name: value" lines sent with every notification (never shown on reads)."""
    content: str = Field(max_length=16)
    heartbeat_seconds: int | None = None
    timeout_seconds: float | None = None
    max_count: int | None = None
    filter_patient: str | None = Field(default=None, max_length=256)
    """`Patient/<id>`: only events about this patient."""
    filter_category: str | None = Field(default=None, max_length=512)
    """A token (`system|code` or `code`): only events about plans in this category."""
    owner_patient: str | None = Field(default=None, max_length=64)
    """Set when a patient/ scope created it: it stays limited to that patient."""
    end_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    events_since_start: int = 0
    resource: str = Field(sa_type=Text)
    """The submitted Subscription (JSON) with server-assigned id; status and error come from the columns."""
    created: datetime = Field(sa_type=DateTime(timezone=True), nullable=False)
    updated: datetime = Field(sa_type=DateTime(timezone=True), nullable=False)
    heartbeat_due_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    deleted: bool = False
    row_version: int = 1

    def header_lines(self) -> list[str]:
        return list(orjson.loads(self.headers))


class Notification(LeaseColumns, table=True):
    __tablename__ = "careplan_subscription_notification"
    __table_args__ = (
        UniqueConstraint("subscription_id", "seq", name="uq_careplan_notification_seq"),
        Index("ix_careplan_notification_due", "state", "next_attempt_at"),
    )

    id: str = Field(primary_key=True, max_length=64)
    subscription_id: str = Field(max_length=64)
    seq: int
    """0 for the handshake, else the event number (eventsSinceSubscriptionStart when it happened)."""
    kind: str = Field(max_length=24)
    topic: str = Field(max_length=256)
    focus_type: str | None = Field(default=None, max_length=32)
    focus_id: str | None = Field(default=None, max_length=64)
    focus_version: int | None = None
    interaction: str | None = Field(default=None, max_length=8)
    """create | update: how the focus came to be (the notification Bundle's entry.request)."""
    occurred: datetime = Field(sa_type=DateTime(timezone=True), nullable=False)


SUBSCRIPTIONS = core_table(Subscription)
NOTIFICATIONS = core_table(Notification)
"""The two tables for Core statements on columns alone (the event fan-out, the notifier's claims)."""
