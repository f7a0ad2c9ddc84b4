"""The outbox relay's SQL: claim due deliveries, record each attempt's result, release on shutdown.

Claiming is a short transaction of its own, so no database lock is held while the
EHR is being called:

- PostgreSQL: the due rows are picked with `FOR UPDATE SKIP LOCKED`, which hands each
  to exactly one of any number of concurrent workers without them waiting on each other;
- SQLite has neither row locks nor SKIP LOCKED: run one dispatcher there (the
  embedded default). Correctness does not depend on that: a claim is one UPDATE that
  bumps the row's `lease` (a fencing token) under SQLite's write lock, and every result
  write is a compare-and-set on that lease, so a second worker could only waste effort,
  never deliver twice from a stale claim.

A claim sets `claimed_until` (the lease). A worker killed mid-delivery leaves its
rows `sending`; once the lease runs out they are due again, and because the dead
worker may have reached the EHR they are claimed as *ambiguous*: the next attempt
searches the EHR before sending anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import aliased
from sqlmodel import Session

from services.careplan.delivery.outbox import (
    CANCELLED,
    COMPLETED,
    FAILED,
    OPEN_STATES,
    PENDING,
    SENDING,
    Delivery,
)
from services.fhir.store import as_utc, utcnow


@dataclass(frozen=True)
class Claim:
    """A delivery this worker holds, as it was when claimed."""

    delivery: Delivery
    lease: int
    was_ambiguous: bool


def _due(now: datetime) -> Any:
    """Rows to claim: pending and due, or sending with an expired lease; never ahead of an earlier version.

    "No earlier version is open" is asked as "this is the plan's first open version": a scalar
    subquery that PostgreSQL answers with one probe of the (careplan_id, careplan_version) index per
    due row. Asked as NOT EXISTS, it became an anti-join, and on a table without fresh statistics
    (a burst of plans queued into a new or quiet outbox) a nested loop comparing every due row with
    every open one: 47 ms a claim with 600 queued, most of the database's work for a whole drain."""
    earlier = aliased(Delivery)
    first_open = (select(func.min(earlier.careplan_version))
                  .where(earlier.careplan_id == Delivery.careplan_id, earlier.state.in_(OPEN_STATES))
                  .scalar_subquery())
    return and_(
        or_(and_(Delivery.state == PENDING, Delivery.next_attempt_at <= now),
            and_(Delivery.state == SENDING, Delivery.claimed_until < now)),
        Delivery.careplan_version == first_open,
    )


def claim(engine: Engine, *, worker: str, limit: int, lease_seconds: float) -> list[Claim]:
    """Take up to `limit` due deliveries for `worker` (committed before returning).

    One statement: `UPDATE ... WHERE id IN (due rows) RETURNING *`. The lease bump and the
    ambiguity of a row whose lease ran out (`state = 'sending'` before the update) are computed
    by the database from the row it updates, so every returned row carries the lease this claim
    set; no row is handed out twice, and the claim costs one round trip however many rows it takes."""
    now = utcnow()
    due = (select(Delivery.id).where(_due(now))
           .order_by(Delivery.next_attempt_at, Delivery.careplan_version).limit(limit).correlate(None))
    if engine.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True, of=Delivery)
    stmt = (update(Delivery).where(Delivery.id.in_(due.scalar_subquery()))
            .values(state=SENDING, claimed_by=worker, claimed_until=now + timedelta(seconds=lease_seconds),
                    lease=Delivery.lease + 1,
                    # its worker died or lost its lease: the EHR may have it
                    ambiguous=or_(Delivery.ambiguous, Delivery.state == SENDING),
                    first_attempt_at=func.coalesce(Delivery.first_attempt_at, now),
                    updated=now, row_version=Delivery.row_version + 1)
            .returning(Delivery).execution_options(synchronize_session=False))
    with Session(engine, expire_on_commit=False) as session:
        rows = list(session.scalars(stmt).all())
        session.commit()
    rows.sort(key=lambda row: (as_utc(row.next_attempt_at), row.careplan_version))
    return [Claim(row, row.lease, row.ambiguous) for row in rows]


def _finish(engine: Engine, claim: Claim, **values: Any) -> bool:
    """Write the attempt's result if the lease is still ours; False when another worker took the row over.

    A Core statement on one connection: the ORM session and its bulk-update machinery cost more
    than the statement itself, once per delivery."""
    table = Delivery.__table__
    with engine.begin() as connection:
        result = connection.execute(
            update(table).where(table.c.id == claim.delivery.id, table.c.lease == claim.lease,
                                table.c.state == SENDING)
            .values(updated=utcnow(), claimed_by=None, claimed_until=None,
                    row_version=table.c.row_version + 1, **values))
        return result.rowcount == 1


def record_success(engine: Engine, claim: Claim, *, shape: str, ehr_type: str, ehr_id: str,
                   ehr_version: str | None, outputs: list[str], readback: list[str] | None,
                   attempts: int) -> bool:
    return _finish(engine, claim, state=COMPLETED, shape=shape, ehr_type=ehr_type, ehr_id=ehr_id,
                   ehr_version=ehr_version, ehr_outputs=orjson.dumps(outputs).decode(),
                   readback=None if readback is None else orjson.dumps(readback).decode(),
                   attempts=attempts, ambiguous=False, finished_at=utcnow(), last_error=None)


def record_retry(engine: Engine, claim: Claim, *, attempts: int, next_attempt_at: datetime, ambiguous: bool,
                 error: str, status: int | None, shape: str | None) -> bool:
    return _finish(engine, claim, state=PENDING, attempts=attempts, next_attempt_at=next_attempt_at,
                   ambiguous=ambiguous, last_error=error, last_status=status, shape=shape)


def record_failure(engine: Engine, claim: Claim, *, attempts: int, error: str, status: int | None,
                   outcome: dict[str, Any] | None, ambiguous: bool, shape: str | None) -> bool:
    return _finish(engine, claim, state=FAILED, attempts=attempts, last_error=error, last_status=status,
                   outcome=orjson.dumps(outcome).decode() if outcome else None, ambiguous=ambiguous,
                   finished_at=utcnow(), shape=shape)


def record_cancelled(engine: Engine, claim: Claim, *, reason: str) -> bool:
    return _finish(engine, claim, state=CANCELLED, last_error=reason, finished_at=utcnow())


def release(engine: Engine, claim: Claim, *, ambiguous: bool) -> bool:
    """Give a claimed delivery back at once (graceful shutdown); due immediately for another worker."""
    return _finish(engine, claim, state=PENDING, next_attempt_at=utcnow(),
                   ambiguous=claim.was_ambiguous or ambiguous)


def requeue(session: Session, delivery: Delivery) -> None:
    """$retry: a failed delivery starts again with a fresh attempt budget and age window."""
    now = utcnow()
    delivery.state = PENDING
    delivery.attempts = 0
    delivery.window_start = now
    delivery.next_attempt_at = now
    delivery.finished_at = None
    delivery.updated = now
    delivery.row_version += 1
    session.add(delivery)


def latest_completed(session: Session, careplan_id: str, *, before_version: int | None = None) -> Delivery | None:
    """The newest delivery of this plan that reached the EHR: what the EHR holds, and at which version."""
    stmt = select(Delivery).where(Delivery.careplan_id == careplan_id, Delivery.state == COMPLETED)
    if before_version is not None:
        stmt = stmt.where(Delivery.careplan_version < before_version)
    return session.scalars(stmt.order_by(Delivery.careplan_version.desc()).limit(1)).first()


def completed_by_plan(session: Session, careplan_ids: list[str]) -> dict[str, list[Delivery]]:
    """Every delivery of these plans that reached the EHR, newest version first: one query for a claimed batch.

    For each claimed version, the first entry other than itself is either a later version (it is
    superseded) or the version the EHR holds before it (it goes out as an update of that copy)."""
    stmt = (select(Delivery).where(Delivery.careplan_id.in_(careplan_ids), Delivery.state == COMPLETED)
            .order_by(Delivery.careplan_id, Delivery.careplan_version.desc()))
    found: dict[str, list[Delivery]] = {careplan_id: [] for careplan_id in careplan_ids}
    for row in session.scalars(stmt):
        found[row.careplan_id].append(row)
    return found


def next_due(engine: Engine) -> datetime | None:
    """When the earliest pending delivery (or lease) falls due: how long an idle dispatcher may sleep."""
    with Session(engine) as session:
        pending = session.scalar(select(func.min(Delivery.next_attempt_at)).where(Delivery.state == PENDING))
        lease = session.scalar(select(func.min(Delivery.claimed_until)).where(Delivery.state == SENDING))
    moments = [as_utc(m) for m in (pending, lease) if m is not None]
    return min(moments) if moments else None


def open_count(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(Delivery)
                                  .where(Delivery.state.in_(OPEN_STATES))) or 0)


def backlog(engine: Engine) -> tuple[int, datetime | None]:
    """(deliveries not yet finished, enqueue time of the oldest of them) for the metrics."""
    with Session(engine) as session:
        row = session.execute(select(func.count(), func.min(Delivery.created))
                              .where(Delivery.state.in_(OPEN_STATES))).one()
    return int(row[0] or 0), as_utc(row[1]) if row[1] is not None else None


__all__ = ["Claim", "claim", "record_success", "record_retry", "record_failure", "record_cancelled", "release",
           "requeue", "latest_completed", "completed_by_plan", "next_due", "open_count", "backlog", "FAILED"]
