"""Leased work queues in the careplan database: the SQL every outbox relay shares.

A queue is a table whose rows each carry one piece of outgoing work and its state
(`pending` -> `sending` -> a final state), grouped so that the rows of one group go
out one at a time in `order` (the versions of one plan, the events of one
subscription). The plan delivery outbox and the subscription notification outbox
are both such queues; their relays differ in what they send, not in how they claim.

Claiming is one short transaction of its own, so no database lock is held while the
remote end is called:

- PostgreSQL picks the due rows with `FOR UPDATE SKIP LOCKED`, which hands each to
  exactly one of any number of concurrent workers without them waiting on each other;
- SQLite has neither row locks nor SKIP LOCKED, but a claim is one UPDATE that bumps
  the row's `lease` (a fencing token) under SQLite's write lock, and every result is
  written as a compare-and-set on that lease, so a second worker can only waste effort.

A claim sets `claimed_until`. A worker killed mid-send leaves its rows `sending`; once
the lease runs out they are due again and claimed as *ambiguous* (the remote end may
have received the earlier attempt).

A queue table is a `LeaseColumns` model with an `id` and its group and order columns.

Whatever queues work wakes the queue's relays with `notify`, in the transaction that queues it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    DateTime,
    Integer,
    String,
    Text,
    and_,
    bindparam,
    func,
    literal,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Field, Session, SQLModel

from services.fhir.store import as_utc, utcnow

PENDING, SENDING = "pending", "sending"
OPEN_STATES = (PENDING, SENDING)


def notify(db: OrmSession | Connection, channel: str) -> None:
    """Wake the relays that LISTEN on `channel` once the current transaction commits.

    PostgreSQL delivers a NOTIFY only on commit, so no relay wakes before the row it is woken
    for is visible. Other databases have no NOTIFY: there the relay's poll, and a poke after
    a commit in the same process, wake it."""
    dialect = db.get_bind().dialect if isinstance(db, OrmSession) else db.dialect
    if dialect.name == "postgresql":
        db.execute(text(f"NOTIFY {channel}"))


def pg_notify(channel: str) -> ColumnElement[Any]:
    """`notify` as a function call (PostgreSQL), to be part of a statement a transaction on the event loop runs:
    the rows it writes and the notification in one statement."""
    return func.pg_notify(literal(channel), literal(""))


def column_defaults(model: type[SQLModel]) -> dict[str, Any]:
    """The default of every field of `model` that has one: a queue row written as a plain dict, without an ORM
    object, still gives every column its value."""
    return {name: info.default for name, info in model.model_fields.items() if not info.is_required()}


def _when(**kwargs: Any) -> Any:
    return Field(sa_type=DateTime(timezone=True), **kwargs)


class LeaseColumns(SQLModel):
    """The state every leased-queue row carries: where it is, its attempts, its lease and its last error."""

    state: str = Field(default=PENDING, max_length=16)
    attempts: int = 0
    created: datetime = _when(nullable=False)
    updated: datetime = _when(nullable=False)
    window_start: datetime = _when(nullable=False)
    """Start of the retry window (the max-age bound): when the row was queued, or queued again."""
    next_attempt_at: datetime = _when(nullable=False)
    first_attempt_at: datetime | None = _when(default=None)
    finished_at: datetime | None = _when(default=None)
    claimed_by: str | None = Field(default=None, max_length=128)
    claimed_until: datetime | None = _when(default=None)
    lease: int = 0
    """Fencing token: bumped by every claim; a worker writes its result only while the lease is still its own."""
    ambiguous: bool = False
    """The remote end may have received an earlier attempt (its worker died or lost its lease mid-send)."""
    last_status: int | None = None
    last_error: str | None = Field(default=None, sa_type=Text)
    row_version: int = 1
    """Bumped on every change of the row (a delivery Task's meta.versionId)."""


AfterFinish = Callable[[Connection], None]
"""Runs in the transaction that records a result (only when the lease was still ours)."""


@dataclass(frozen=True)
class Finish:
    """One result for `LeasedQueue.finish_many_in`: the row, the lease it was claimed with, the columns to write."""

    row_id: str
    lease: int
    values: dict[str, Any]
    then: AfterFinish | None = None


@dataclass(frozen=True)
class LeasedQueue:
    model: Any
    """The SQLModel table class."""
    group: str
    """Column whose rows go out one at a time, in `order`."""
    order: str
    _statements: dict[tuple[str, Any], Any] = field(default_factory=dict, compare=False, repr=False)
    """Statements built once and executed with bind parameters (`_claim_statement`, `_finish_statement`)."""

    @property
    def _table(self) -> Any:
        return self.model.__table__

    def _first_open(self) -> Any:
        """Whether an open row is its group's first open row (no earlier row of the group is still open).

        A scalar subquery that PostgreSQL answers with one probe of the (group, order) index per row it asks
        about. Asked as NOT EXISTS, it became an anti-join, and on a table without fresh statistics a nested
        loop over every open row. It is asked as "at most the group's first open position", which for an open
        row (itself one of the group's open rows) means "is the first": PostgreSQL guesses that an equality
        with a subquery holds for one row in 200, and then expects to read every due row to find a claim's
        worth and sorts them all, where most due rows are their group's first and a few dozen suffice."""
        table = self._table
        earlier = table.alias()
        first_open = (select(func.min(earlier.c[self.order]))
                      .where(earlier.c[self.group] == table.c[self.group], earlier.c.state.in_(OPEN_STATES))
                      .scalar_subquery())
        return table.c[self.order] <= first_open

    def _due(self, state: ColumnElement[bool], dialect: str) -> Any:
        """The first `limit` claimable rows in one state, in due order, locked (PostgreSQL) as they are read.

        Due order is the next attempt's time alone, which the (state, next attempt) index yields as it is read,
        so the scan stops at the limit. Rows due at the same moment come in any order: they belong to different
        groups (a group's later rows wait for its first), so no order among them is owed."""
        table = self._table
        rows = (select(table.c.id, table.c.next_attempt_at)
                .where(state, self._first_open())
                .order_by(table.c.next_attempt_at)
                .limit(bindparam("limit", type_=Integer)))
        if dialect == "postgresql":
            rows = rows.with_for_update(skip_locked=True, of=table)
        return rows.subquery()

    def claim(self, engine: Engine, *, worker: str, limit: int, lease_seconds: float) -> list[Any]:
        """Take up to `limit` due rows for `worker` (committed before returning), in due order."""
        with Session(engine, expire_on_commit=False) as session:
            rows = self.claim_in(session, worker=worker, limit=limit, lease_seconds=lease_seconds)
            session.commit()
        return rows

    def claim_in(self, session: OrmSession, *, worker: str, limit: int, lease_seconds: float) -> list[Any]:
        """`claim` inside the caller's transaction (the caller commits), so results written just before in the
        same transaction free the next rows of their groups for this very claim.

        One statement: `UPDATE ... WHERE id IN (due rows) RETURNING *`. The lease bump and the ambiguity of
        a row whose lease ran out (`state = 'sending'` before the update) are computed by the database from
        the row it updates, so every returned row carries the lease this claim set."""
        now = utcnow()
        rows = list(session.scalars(self._claim_statement(session.get_bind().dialect.name), {
            "now": now, "until": now + timedelta(seconds=lease_seconds), "worker": worker, "limit": limit}).all())
        rows.sort(key=lambda row: (as_utc(row.next_attempt_at), getattr(row, self.order)))
        return rows

    def _claim_statement(self, dialect: str) -> Any:
        """The claim's UPDATE, built once per database kind with its values as bind parameters (`now`, `until`,
        `worker`, `limit`): a statement built anew for every claim costs more than the database's work on it.

        A Core UPDATE on the table, from which the ORM loads the rows: an ORM-enabled UPDATE was copied for every
        claim, and SQLAlchemy worked out the copy's cache key again (0.5-0.8 ms of CPU a claim in process, against
        1.4-1.6 ms for the rest of it with its commit)."""
        statement = self._statements.get(("claim", dialect))
        if statement is None:
            table, now = self._table, bindparam("now", type_=DateTime(timezone=True))
            # Pending rows that are due, and rows whose lease ran out, each walked in due order on the (state,
            # next attempt) index until `limit` are found; the claim takes the first `limit` of the two. As one
            # condition with OR, the database read and sorted every due row for each claim: a backlog of
            # 2,000 deliveries cost 3-4 ms a claim, against about 0.5 ms now.
            parts = [self._due(and_(table.c.state == PENDING, table.c.next_attempt_at <= now), dialect),
                     self._due(and_(table.c.state == SENDING, table.c.claimed_until < now), dialect)]
            due = union_all(*(select(part.c.id, part.c.next_attempt_at) for part in parts)).subquery()
            first = select(due.c.id).order_by(due.c.next_attempt_at).limit(bindparam("limit", type_=Integer))
            statement = (update(table).where(table.c.id.in_(first.scalar_subquery()))
                         .values(state=SENDING, claimed_by=bindparam("worker", type_=String),
                                 claimed_until=bindparam("until", type_=DateTime(timezone=True)),
                                 lease=table.c.lease + 1,
                                 # its worker died or lost its lease: the remote end may have it
                                 ambiguous=or_(table.c.ambiguous, table.c.state == SENDING),
                                 first_attempt_at=func.coalesce(table.c.first_attempt_at, now),
                                 updated=now, row_version=table.c.row_version + 1)
                         .returning(*table.c))
            statement = select(self.model).from_statement(statement)
            self._statements[("claim", dialect)] = statement
        return statement

    def renew(self, engine: Engine, *, worker: str, ids: Sequence[str], lease_seconds: float) -> int:
        """Extend the lease on rows `worker` is still working on, so that a live worker's slow attempt is
        never taken over and sent a second time; a dead worker's rows come back one lease after its last
        renewal. Returns how many rows were still the worker's."""
        if not ids:
            return 0
        table = self._table
        with engine.begin() as connection:
            result = connection.execute(
                update(table).where(table.c.id.in_(list(ids)), table.c.claimed_by == worker, table.c.state == SENDING)
                .values(claimed_until=utcnow() + timedelta(seconds=lease_seconds)))
        return int(result.rowcount)

    def finish(self, engine: Engine, row_id: str, lease: int, *, then: AfterFinish | None = None,
               **values: Any) -> bool:
        """Write an attempt's result if the lease is still ours; False when another worker took the row over.

        `then` runs in the same transaction, so what follows from the result (an event about it, the
        state of what the row belongs to) commits with it or not at all."""
        with engine.begin() as connection:
            return self.finish_in(connection, row_id, lease, then=then, **values)

    def finish_in(self, connection: Connection, row_id: str, lease: int, *, then: AfterFinish | None = None,
                  **values: Any) -> bool:
        """`finish` inside the caller's transaction (the caller commits)."""
        result = connection.execute(self._finish_statement(frozenset(values)),
                                    {"row_id": row_id, "row_lease": lease, "now": utcnow(),
                                     **{f"set_{name}": value for name, value in values.items()}})
        if result.rowcount != 1:
            return False
        if then is not None:
            then(connection)
        return True

    def finish_many_in(self, connection: Connection, results: Sequence[Finish]) -> list[bool]:
        """Several results in the caller's transaction; whether each was written, in order.

        The results that write the same columns go as one executemany (one round trip, pipelined on
        PostgreSQL) instead of a statement each. When its row count says a lease was lost, the rows are read
        back: a row was written when it still carries the result's lease and has left `sending`, which only
        this worker could have done under that lease. Each written result's `then` runs afterwards, in order."""
        written: dict[int, bool] = {}
        groups: dict[frozenset[str], list[int]] = {}
        for index, result in enumerate(results):
            groups.setdefault(frozenset(result.values), []).append(index)
        now = utcnow()
        for columns, indexes in groups.items():
            params = [{"row_id": results[i].row_id, "row_lease": results[i].lease, "now": now,
                       **{f"set_{name}": value for name, value in results[i].values.items()}} for i in indexes]
            count = connection.execute(self._finish_statement(columns), params).rowcount
            if count == len(indexes):
                written.update(dict.fromkeys(indexes, True))
                continue
            table = self._table
            rows = {row.id: row for row in connection.execute(
                select(table.c.id, table.c.lease, table.c.state)
                .where(table.c.id.in_([results[i].row_id for i in indexes])))}
            for i in indexes:
                row = rows.get(results[i].row_id)
                written[i] = row is not None and row.lease == results[i].lease and row.state != SENDING
        for index, result in enumerate(results):
            if written[index] and result.then is not None:
                result.then(connection)
        return [written[index] for index in range(len(results))]

    def _finish_statement(self, columns: frozenset[str]) -> Any:
        """The compare-and-set UPDATE that writes `columns` (bind parameters `set_<column>`), built once for each
        set of columns a result writes."""
        statement = self._statements.get(("finish", columns))
        if statement is None:
            table = self._table
            statement = (update(table)
                         .where(table.c.id == bindparam("row_id"), table.c.lease == bindparam("row_lease"),
                                table.c.state == SENDING)
                         .values({table.c[name]: bindparam(f"set_{name}", type_=table.c[name].type)
                                  for name in sorted(columns)})
                         .values(updated=bindparam("now", type_=DateTime(timezone=True)), claimed_by=None,
                                 claimed_until=None, row_version=table.c.row_version + 1))
            self._statements[("finish", columns)] = statement
        return statement

    def next_due(self, engine: Engine) -> datetime | None:
        """When the earliest pending row (or lease) falls due: how long an idle relay may sleep."""
        model = self.model
        with Session(engine) as session:
            pending = session.scalar(select(func.min(model.next_attempt_at)).where(model.state == PENDING))
            lease = session.scalar(select(func.min(model.claimed_until)).where(model.state == SENDING))
        moments = [as_utc(m) for m in (pending, lease) if m is not None]
        return min(moments) if moments else None

    def open_count(self, engine: Engine) -> int:
        model = self.model
        with Session(engine) as session:
            return int(session.scalar(select(func.count()).select_from(model)
                                      .where(model.state.in_(OPEN_STATES))) or 0)
