"""The delivery outbox's SQL: claim due deliveries, record each attempt's result, release on shutdown.

An attempt's result is a `Result`: the columns to write, built when the attempt ends. The dispatcher writes
the results of a batch in the transaction of its next claim (`record_and_claim`), not one transaction each.

Claiming, leases and fencing are the careplan's leased-queue rules (`services.careplan.leases`):
`FOR UPDATE SKIP LOCKED` on PostgreSQL, a compare-and-set on the lease everywhere. A worker
killed mid-delivery leaves its rows `sending`; once the lease runs out they are claimed as
*ambiguous* and the next attempt searches the EHR before sending anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, col

from services.careplan.delivery.outbox import (
    CANCELLED,
    COMPLETED,
    FAILED,
    OPEN_STATES,
    PENDING,
    Delivery,
)
from services.careplan.leases import AfterFinish, Finish, LeasedQueue
from services.fhir.store import as_utc, utcnow

QUEUE = LeasedQueue(Delivery, group="careplan_id", order="careplan_version")
"""Versions of one plan go out one at a time, in version order."""


@dataclass(frozen=True)
class Claim:
    """A delivery this worker holds, as it was when claimed."""

    delivery: Delivery
    lease: int
    was_ambiguous: bool


def claim(engine: Engine, *, worker: str, limit: int, lease_seconds: float) -> list[Claim]:
    """Take up to `limit` due deliveries for `worker` (committed before returning)."""
    rows = QUEUE.claim(engine, worker=worker, limit=limit, lease_seconds=lease_seconds)
    return [Claim(row, row.lease, row.ambiguous) for row in rows]


@dataclass(frozen=True)
class Result:
    """An attempt's result as the columns to write to its row, written only while the lease is still ours."""

    claim: Claim
    values: dict[str, Any]
    then: AfterFinish | None = None
    """Runs in the transaction that writes the result (the finish hooks of a final state)."""


def write(connection: Connection, result: Result) -> bool:
    """Write `result` in the caller's transaction; False when another worker took the row over."""
    return QUEUE.finish_in(connection, result.claim.delivery.id, result.claim.lease, then=result.then,
                           **result.values)


def record(engine: Engine, result: Result) -> bool:
    """Write `result` in a transaction of its own."""
    with engine.begin() as connection:
        return write(connection, result)


def record_and_claim(connection: Connection, results: list[Result], *, worker: str, limit: int,
                     lease_seconds: float) -> tuple[list[bool], list[Claim]]:
    """Write the results of finished attempts and claim up to `limit` due deliveries, in one transaction.

    The results go first, so a completed version frees the plan's next version for this very claim.
    Whether each result was written (the lease still ours) comes back in order, with the claims."""
    with Session(bind=connection, expire_on_commit=False) as session:
        written = QUEUE.finish_many_in(session.connection(), [
            Finish(result.claim.delivery.id, result.claim.lease, result.values, result.then) for result in results])
        rows = QUEUE.claim_in(session, worker=worker, limit=limit, lease_seconds=lease_seconds) if limit > 0 else []
        session.commit()
    return written, [Claim(row, row.lease, row.ambiguous) for row in rows]


def success(claim: Claim, *, shape: str, ehr_type: str, ehr_id: str, ehr_version: str | None, outputs: list[str],
            readback: list[str] | None, attempts: int, then: AfterFinish | None = None) -> Result:
    return Result(claim, {"state": COMPLETED, "shape": shape, "ehr_type": ehr_type, "ehr_id": ehr_id,
                          "ehr_version": ehr_version, "ehr_outputs": orjson.dumps(outputs).decode(),
                          "readback": None if readback is None else orjson.dumps(readback).decode(),
                          "attempts": attempts, "ambiguous": False, "finished_at": utcnow(), "last_error": None},
                  then)


def retry(claim: Claim, *, attempts: int, next_attempt_at: datetime, ambiguous: bool, error: str,
          status: int | None, shape: str | None) -> Result:
    return Result(claim, {"state": PENDING, "attempts": attempts, "next_attempt_at": next_attempt_at,
                          "ambiguous": ambiguous, "last_error": error, "last_status": status, "shape": shape})


def failure(claim: Claim, *, attempts: int, error: str, status: int | None, outcome: dict[str, Any] | None,
            ambiguous: bool, shape: str | None, then: AfterFinish | None = None) -> Result:
    return Result(claim, {"state": FAILED, "attempts": attempts, "last_error": error, "last_status": status,
                          "outcome": orjson.dumps(outcome).decode() if outcome else None, "ambiguous": ambiguous,
                          "finished_at": utcnow(), "shape": shape}, then)


def cancelled(claim: Claim, *, reason: str) -> Result:
    return Result(claim, {"state": CANCELLED, "last_error": reason, "finished_at": utcnow()})


def release(claim: Claim, *, ambiguous: bool) -> Result:
    """Give a claimed delivery back at once (graceful shutdown); due immediately for another worker."""
    return Result(claim, {"state": PENDING, "next_attempt_at": utcnow(),
                          "ambiguous": claim.was_ambiguous or ambiguous})


def record_success(engine: Engine, claim: Claim, *, shape: str, ehr_type: str, ehr_id: str,
                   ehr_version: str | None, outputs: list[str], readback: list[str] | None,
                   attempts: int, then: AfterFinish | None = None) -> bool:
    return record(engine, success(claim, shape=shape, ehr_type=ehr_type, ehr_id=ehr_id, ehr_version=ehr_version,
                                  outputs=outputs, readback=readback, attempts=attempts, then=then))


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
    stmt = select(Delivery).where(col(Delivery.careplan_id) == careplan_id, col(Delivery.state) == COMPLETED)
    if before_version is not None:
        stmt = stmt.where(col(Delivery.careplan_version) < before_version)
    return session.scalars(stmt.order_by(col(Delivery.careplan_version).desc()).limit(1)).first()


def completed_by_plan(session: Session, careplan_ids: list[str]) -> dict[str, list[Delivery]]:
    """Every delivery of these plans that reached the EHR, newest version first: one query for a claimed batch.

    For each claimed version, the first entry other than itself is either a later version (it is
    superseded) or the version the EHR holds before it (it goes out as an update of that copy)."""
    stmt = (select(Delivery).where(col(Delivery.careplan_id).in_(careplan_ids), col(Delivery.state) == COMPLETED)
            .order_by(col(Delivery.careplan_id), col(Delivery.careplan_version).desc()))
    found: dict[str, list[Delivery]] = {careplan_id: [] for careplan_id in careplan_ids}
    for row in session.scalars(stmt):
        found[row.careplan_id].append(row)
    return found


def next_due(engine: Engine) -> datetime | None:
    """When the earliest pending delivery (or lease) falls due: how long an idle dispatcher may sleep."""
    return QUEUE.next_due(engine)


def open_count(engine: Engine) -> int:
    return QUEUE.open_count(engine)


def backlog(engine: Engine) -> tuple[int, datetime | None]:
    """(deliveries not yet finished, enqueue time of the oldest of them) for the metrics."""
    with Session(engine) as session:
        row = session.execute(select(func.count(), func.min(Delivery.created))
                              .where(col(Delivery.state).in_(OPEN_STATES))).one()
    return int(row[0] or 0), as_utc(row[1]) if row[1] is not None else None


__all__ = ["Claim", "Result", "claim", "write", "record", "record_and_claim", "success", "retry", "failure",
           "cancelled", "release", "record_success", "requeue", "latest_completed", "completed_by_plan", "next_due",
           "open_count", "backlog", "FAILED"]
