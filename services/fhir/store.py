"""Versioned FHIR resource storage with indexed search.

The store keeps, per service, the current version of every resource (its JSON
bytes exactly as served), every past version, and the extracted search values. It
implements the storage half of FHIR REST: read, vread, history, create, update with
optimistic locking, delete, and search with keyset paging (links stay correct while
other clients write, because a page is anchored on its last row, not an offset).
Every version it writes is published, inside the writing transaction, to the
listeners registered with `listen` (a read cache, the care-plan delivery outbox).

It knows nothing about HTTP; routes in each service translate between the two.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Protocol, cast, runtime_checkable

import orjson
from psycopg import sql
from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    delete,
    exists,
    false,
    func,
    insert,
    not_,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped
from sqlmodel import Session, col

from services.fhir.loopdb import LoopDatabase, LoopTransaction, RowInserts
from services.fhir.outcome import BadRequest, Conflict, Gone, NotFound, PreconditionFailed
from services.fhir.searchparams import (
    FHIR_ID,
    Criterion,
    SearchParamDef,
    SearchQuery,
    extract,
    normalise,
    parse_date_criterion,
)


def utcnow() -> datetime:
    """Now, in UTC, at millisecond precision (what `meta.lastUpdated` carries)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def instant(moment: datetime) -> str:
    return as_utc(moment).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class StoredResource:
    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    content: bytes | None
    method: str = "PUT"

    def parsed(self) -> dict[str, Any]:
        """The content as a new dict, the caller's to change."""
        assert self.content is not None
        resource: dict[str, Any] = orjson.loads(self.content)
        return resource

    @cached_property
    def resource(self) -> Mapping[str, Any]:
        """The content parsed once, for reading only: the checks a request runs on what it serves (the patient
        compartment, the audit trail) share one parse of a resource of tens of kilobytes."""
        return self.parsed()


WriteListener = Callable[[Session, StoredResource, StoredResource | None], None]
"""Told of every version written, inside the writing transaction: (session, new version, the version it replaced
or None for a new resource). A listener that raises fails the write, so what it queues commits with the version."""


@runtime_checkable
class LoopListener(Protocol):
    """A write listener that also takes part in a write run on the event loop (`ResourceStore.create_in`), with the
    statements it runs in a session."""

    def __call__(self, session: Session, written: StoredResource, previous: StoredResource | None) -> None: ...

    async def on_loop(self, transaction: LoopTransaction, written: StoredResource,
                      previous: StoredResource | None) -> None: ...


@dataclass
class SearchPage:
    matches: list[StoredResource]
    included: list[StoredResource] = field(default_factory=list)
    total: int | None = None
    next_cursor: str | None = None
    previous_cursor: str | None = None


class ResourceStore:
    """Storage and search over one service's three tables."""

    def __init__(self, resource_table: Any, version_table: Any, index_table: Any,
                 search_params: Mapping[str, Mapping[str, SearchParamDef]]) -> None:
        self.R = resource_table
        self.V = version_table
        self.I = index_table
        self.search_params = search_params
        self._listeners: list[tuple[WriteListener, Collection[str] | None]] = []
        self._session_only: list[frozenset[str] | None] = []
        """What each listener that writes only in a session follows (None: every type), for `writes_on_loop`: a
        check against a runtime protocol costs tens of microseconds, so it is made once, when a listener is added."""
        self._read_statement: bytes | None = None
        self._insert_statement: RowInserts | None = None

    def listen(self, listener: WriteListener, *, types: Collection[str] | None = None) -> None:
        """Publish every write (of `types`, or of any type) to `listener`, after those registered before it:
        a read cache drops what a write makes stale, the delivery outbox queues a new plan version."""
        followed = frozenset(types) if types is not None else None
        self._listeners.append((listener, followed))
        if not isinstance(listener, LoopListener):
            self._session_only.append(followed)

    def _publish(self, session: Session, written: StoredResource, previous: StoredResource | None) -> None:
        for listener in self._listeners_of(written.resource_type):
            listener(session, written, previous)

    def _listeners_of(self, resource_type: str) -> list[WriteListener]:
        return [listener for listener, types in self._listeners if types is None or resource_type in types]

    # ------------------------------------------------------------------ reads

    def _row(self, session: Session, resource_type: str, resource_id: str, *, lock: bool = False) -> Any:
        """The current row as a plain Core row: a read needs no ORM object or identity map."""
        table = self.R.__table__
        stmt = select(table).where(table.c.resource_type == resource_type, table.c.id == resource_id)
        if lock:
            stmt = stmt.with_for_update()
        return session.execute(stmt).first()

    def read(self, session: Session, resource_type: str, resource_id: str) -> StoredResource:
        """The current version; 404 when unknown, 410 when deleted."""
        if not FHIR_ID.match(resource_id):
            raise BadRequest(f"'{resource_id}' is not a valid FHIR id", expression="id")
        row = self._row(session, resource_type, resource_id)
        return _live(resource_type, resource_id, self._stored(row) if row is not None else None)

    async def read_on_loop(self, database: LoopDatabase, resource_type: str, resource_id: str) -> StoredResource:
        """`read` as one statement on the event loop (`services.fhir.loopdb`): the care-plan read path."""
        if not FHIR_ID.match(resource_id):
            raise BadRequest(f"'{resource_id}' is not a valid FHIR id", expression="id")
        if self._read_statement is None:
            self._read_statement = sql.SQL(
                "SELECT version_id, last_updated, deleted, content FROM {} WHERE resource_type = %s AND id = %s",
            ).format(sql.Identifier(self.R.__table__.name)).as_bytes()
        row = await database.fetch_one(self._read_statement, (resource_type, resource_id))
        if row is None:
            return _live(resource_type, resource_id, None)
        version_id, last_updated, deleted, content = row
        return _live(resource_type, resource_id, StoredResource(
            resource_type, resource_id, version_id, as_utc(last_updated), deleted, bytes(content)))

    def vread(self, session: Session, resource_type: str, resource_id: str, version_id: str) -> StoredResource:
        if not FHIR_ID.match(resource_id):
            raise BadRequest(f"'{resource_id}' is not a valid FHIR id", expression="id")
        if not version_id.isdigit():
            raise NotFound(f"{resource_type}/{resource_id} has no version '{version_id}'")
        row = session.scalars(select(self.V).where(
            self.V.resource_type == resource_type, self.V.id == resource_id, self.V.version_id == int(version_id),
        )).first()
        if row is None:
            raise NotFound(f"{resource_type}/{resource_id} has no version {version_id}")
        stored = self._stored(row)
        if stored.deleted:
            raise Gone(f"Version {version_id} of {resource_type}/{resource_id} is a deletion")
        return stored

    def read_many(self, session: Session, resource_type: str,
                  resource_ids: Collection[str]) -> dict[str, StoredResource]:
        """The current version of each of `resource_ids` that exists, in one statement (deleted ones included:
        `deleted` says so); ids that are not valid FHIR ids or not known are absent from the answer."""
        wanted = sorted({i for i in resource_ids if FHIR_ID.match(i)})
        if not wanted:
            return {}
        table = self.R.__table__
        rows = session.execute(select(table).where(table.c.resource_type == resource_type, table.c.id.in_(wanted)))
        return {row.id: self._stored(row) for row in rows}

    def vread_many(self, session: Session, resource_type: str,
                   versions: Collection[tuple[str, int]]) -> dict[tuple[str, int], StoredResource]:
        """Each (id, version) of `versions` that exists, in one statement (deletions included: `deleted` says so)."""
        if not versions:
            return {}
        table = self.V.__table__
        rows = session.execute(select(table).where(
            table.c.resource_type == resource_type, table.c.id.in_(sorted({i for i, _ in versions})),
            table.c.version_id.in_(sorted({v for _, v in versions}))))
        found = {(row.id, row.version_id): self._stored(row) for row in rows}
        return {key: found[key] for key in versions if key in found}

    def history(self, session: Session, resource_type: str, resource_id: str, *, count: int = 100,
                before_version: int | None = None) -> list[StoredResource]:
        """Versions newest first; 404 when the resource never existed."""
        if not FHIR_ID.match(resource_id):
            raise BadRequest(f"'{resource_id}' is not a valid FHIR id", expression="id")
        stmt = select(self.V).where(self.V.resource_type == resource_type, self.V.id == resource_id)
        if before_version is not None:
            stmt = stmt.where(self.V.version_id < before_version)
        rows = session.scalars(stmt.order_by(self.V.version_id.desc()).limit(count)).all()
        if not rows and before_version is None:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        return [self._stored(row) for row in rows]

    def find_canonical(self, session: Session, url: str, version: str | None = None,
                       resource_type: str | None = None) -> StoredResource | None:
        """The live resource with this canonical url (and version; newest when no version is given)."""
        stmt = select(self.R).where(self.R.url == url, self.R.deleted == false())
        if version:
            stmt = stmt.where(self.R.version == version)
        if resource_type:
            stmt = stmt.where(self.R.resource_type == resource_type)
        rows = session.scalars(stmt).all()
        if not rows:
            return None
        return self._stored(max(rows, key=lambda r: (_version_key(r.version), as_utc(r.last_updated))))

    # ----------------------------------------------------------------- writes

    def create(self, session: Session, resource: dict[str, Any], *, resource_id: str | None = None) -> StoredResource:
        """Store a new resource under a server-assigned id (or `resource_id` for content loads)."""
        resource_type = resource["resourceType"]
        resource_id = resource_id or str(uuid.uuid4())
        return self._write(session, resource_type, resource_id, resource, version_id=1, method="POST", new=True,
                           previous=None)

    def create_many(self, session: Session, resources: Sequence[dict[str, Any]],
                    ids: Sequence[str] | None = None) -> list[StoredResource]:
        """Store new resources with one statement per table: the audit trail's batches, and a plan with its
        assessment. Ids are server-assigned unless given; a given id that exists raises IntegrityError (the
        caller decides what a duplicate means, e.g. `$generate` answers with the plan already made)."""
        stored, tables = self._new_rows(resources, ids)
        for table, rows in tables:
            if rows:  # one row as a plain statement: psycopg's executemany pipeline costs more than it saves
                session.execute(insert(table), rows[0] if len(rows) == 1 else rows)
        for item in stored:
            self._publish(session, item, None)
        return stored

    async def create_on_loop(self, database: LoopDatabase, resources: Sequence[dict[str, Any]]) -> list[StoredResource]:
        """`create_many` as one statement on the event loop (`services.fhir.loopdb.RowInserts`), for the audit
        trail's batches. Only for types no write listener follows: a listener takes part in a transaction."""
        stored, tables = self._new_rows(resources, None)
        followed = {item.resource_type for item in stored if self.followed(item.resource_type)}
        if followed:
            raise ValueError(f"writes of {', '.join(sorted(followed))} are followed by listeners; use create_in")
        await database.execute(*self._inserts(tables))
        return stored

    async def create_in(self, transaction: LoopTransaction, resources: Sequence[dict[str, Any]],
                        ids: Sequence[str] | None = None) -> list[StoredResource]:
        """`create_many` in a transaction on the event loop: the rows in one statement, then what each listener
        runs for each new version. Every listener of these types must be a `LoopListener` (`writes_on_loop`)."""
        if not self.writes_on_loop({resource["resourceType"] for resource in resources}):
            raise ValueError("a listener of these types writes only in a session; use create_many")
        stored, tables = self._new_rows(resources, ids)
        await transaction.execute(*self._inserts(tables))
        for item in stored:
            for listener in self._listeners_of(item.resource_type):
                await cast(LoopListener, listener).on_loop(transaction, item, None)
        return stored

    def writes_on_loop(self, resource_types: Collection[str]) -> bool:
        """Whether every listener of these types takes part in writes on the event loop (`create_in`)."""
        return not any(types is None or not types.isdisjoint(resource_types) for types in self._session_only)

    def followed(self, resource_type: str) -> bool:
        """Whether a write listener is told of writes of `resource_type`."""
        return bool(self._listeners_of(resource_type))

    def _inserts(self, tables: list[tuple[Table, list[dict[str, Any]]]]) -> tuple[bytes, list[Any]]:
        """The one statement writing new versions' rows into the three tables, and its parameters for `tables`."""
        if self._insert_statement is None:
            self._insert_statement = RowInserts([(table, list(_NEW_ROW_COLUMNS[n]))
                                                 for n, (table, _) in enumerate(tables)])
        return self._insert_statement.query, self._insert_statement.params([rows for _, rows in tables])

    def _new_rows(self, resources: Sequence[dict[str, Any]], ids: Sequence[str] | None,
                  ) -> tuple[list[StoredResource], list[tuple[Table, list[dict[str, Any]]]]]:
        """Version 1 of each resource, and the rows of the current, history and index tables that store them."""
        now = utcnow()
        stored: list[StoredResource] = []
        current_rows: list[dict[str, Any]] = []
        version_rows: list[dict[str, Any]] = []
        index_rows: list[dict[str, Any]] = []
        for n, given in enumerate(resources):
            resource_type, resource_id = given["resourceType"], (ids[n] if ids else None) or str(uuid.uuid4())
            resource, content = _as_version(given, resource_id, 1, now)
            key = {"resource_type": resource_type, "id": resource_id, "version_id": 1, "last_updated": now,
                   "deleted": False, "content": content}
            current_rows.append(key | {"url": _str_or_none(resource.get("url")),
                                       "version": _str_or_none(resource.get("version"))})
            version_rows.append(key | {"method": "POST"})
            index_rows += self._index_rows(resource_type, resource_id, resource)
            stored.append(StoredResource(resource_type, resource_id, 1, now, False, content, "POST"))
        return stored, [(self.R.__table__, current_rows), (self.V.__table__, version_rows),
                        (self.I.__table__, index_rows)]

    def update(self, session: Session, resource_type: str, resource_id: str, resource: dict[str, Any], *,
               if_match: int | None, create_if_missing: bool = False) -> tuple[StoredResource, bool]:
        """Store a new version; `if_match` (when given) must be the current version, else 412.

        Returns the stored version and whether it was created."""
        row = self._row(session, resource_type, resource_id, lock=True)
        if row is None:
            if not create_if_missing:
                raise NotFound(f"{resource_type}/{resource_id} is not known; create it with POST")
            if if_match is not None:
                raise PreconditionFailed(f"{resource_type}/{resource_id} does not exist (If-Match given)")
            return self._write(session, resource_type, resource_id, resource, version_id=1, method="PUT",
                               new=True, previous=None), True
        if if_match is not None and if_match != row.version_id:
            raise PreconditionFailed(
                f"{resource_type}/{resource_id} is at version {row.version_id}, not {if_match} (If-Match)")
        if row.deleted and not create_if_missing:
            raise Gone(f"{resource_type}/{resource_id} was deleted")
        stored = self._write(session, resource_type, resource_id, resource, version_id=row.version_id + 1,
                             method="PUT", new=False, previous=self._stored(row))
        return stored, row.deleted

    def delete(self, session: Session, resource_type: str, resource_id: str, *,
               if_match: int | None = None) -> StoredResource | None:
        """Mark deleted with a new version; None when there was nothing to delete (FHIR: still 200/204)."""
        row = self._row(session, resource_type, resource_id, lock=True)
        if row is None or row.deleted:
            return None
        if if_match is not None and if_match != row.version_id:
            raise PreconditionFailed(
                f"{resource_type}/{resource_id} is at version {row.version_id}, not {if_match} (If-Match)")
        now = utcnow()
        version_id = row.version_id + 1
        result = session.exec(update(self.R).where(
            self.R.resource_type == resource_type, self.R.id == resource_id, self.R.version_id == row.version_id,
        ).values(version_id=version_id, last_updated=now, deleted=True))
        if result.rowcount != 1:
            raise Conflict(f"{resource_type}/{resource_id} changed while it was being deleted; retry")
        session.exec(insert(self.V).values(resource_type=resource_type, id=resource_id, version_id=version_id,
                                           last_updated=now, deleted=True, method="DELETE", content=None))
        session.exec(delete(self.I).where(self.I.resource_type == resource_type, self.I.resource_id == resource_id))
        deleted = StoredResource(resource_type, resource_id, version_id, now, True, None, "DELETE")
        self._publish(session, deleted, self._stored(row))
        return deleted

    def _write(self, session: Session, resource_type: str, resource_id: str, resource: dict[str, Any], *,
               version_id: int, method: str, new: bool, previous: StoredResource | None) -> StoredResource:
        """One version: the current row, the history row and the index rows, as Core statements.

        Core rather than ORM statements because writes are the hot path of `$generate` and of the audit
        trail, and the ORM's unit of work adds nothing for rows that are written once and never loaded."""
        now = utcnow()
        resource, content = _as_version(resource, resource_id, version_id, now)
        values = {"version_id": version_id, "last_updated": now, "deleted": False, "content": content,
                  "url": _str_or_none(resource.get("url")), "version": _str_or_none(resource.get("version"))}
        current, versions = self.R.__table__, self.V.__table__
        try:
            if new:
                session.execute(insert(current).values(resource_type=resource_type, id=resource_id, **values))
            else:
                assert previous is not None
                result = session.exec(update(current).where(
                    current.c.resource_type == resource_type, current.c.id == resource_id,
                    current.c.version_id == previous.version_id).values(**values))
                if result.rowcount != 1:
                    raise PreconditionFailed(f"{resource_type}/{resource_id} changed concurrently; re-read and retry")
            session.execute(insert(versions).values(resource_type=resource_type, id=resource_id,
                                                    version_id=version_id, last_updated=now, deleted=False,
                                                    method=method, content=content))
        except IntegrityError:
            raise Conflict(f"{resource_type}/{resource_id} was written concurrently; retry") from None
        self._reindex(session, resource_type, resource_id, resource, replace=not new)
        written = StoredResource(resource_type, resource_id, version_id, now, False, content, method)
        self._publish(session, written, previous)
        return written

    def _reindex(self, session: Session, resource_type: str, resource_id: str, resource: dict[str, Any], *,
                 replace: bool = True) -> None:
        """The resource's index rows; `replace=False` for a resource written for the first time (none to drop)."""
        index = self.I.__table__
        if replace:
            session.execute(delete(index).where(index.c.resource_type == resource_type,
                                                index.c.resource_id == resource_id))
        rows = self._index_rows(resource_type, resource_id, resource)
        if rows:
            session.execute(insert(index), rows)

    def _index_rows(self, resource_type: str, resource_id: str, resource: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"resource_type": resource_type, "resource_id": resource_id, "param": name, "system": value.system,
                 "value": value.value, "norm": value.norm, "low": value.low, "high": value.high}
                for name, defn in self.search_params.get(resource_type, {}).items()
                for value in extract(defn, resource)]

    # ----------------------------------------------------------------- search

    def search(self, session: Session, query: SearchQuery) -> SearchPage:
        R = self.R
        where = [R.resource_type == query.resource_type, R.deleted == false()]
        where += [self._criterion(query.resource_type, c) for c in query.criteria]
        page = SearchPage(matches=[])
        # `_count=0` asks for no rows: the count is the only answer (fhirpy's `.count()` relies on it).
        if query.total in ("accurate", "estimate") or query.summary == "count" or query.count == 0:
            page.total = session.scalar(select(func.count()).select_from(R).where(*where))
        if query.summary == "count" or query.count == 0:
            return page

        keys = self._sort_expressions(query)
        direction, anchor = _decode_cursor(query.cursor, len(keys)) if query.cursor else ("next", None)
        backwards = direction == "prev"
        if anchor is not None:
            where.append(_keyset(keys, anchor, backwards))
        order = [(expr.desc() if desc != backwards else expr.asc()) for expr, desc in keys]
        stmt = (select(R.resource_type, R.id, R.version_id, R.last_updated, R.content, *[k for k, _ in keys])
                .where(*where).order_by(*order).limit(query.count + 1))
        rows = session.execute(stmt).all()
        more = len(rows) > query.count
        rows = list(rows[: query.count])
        if backwards:
            rows.reverse()
        page.matches = [StoredResource(r[0], r[1], r[2], as_utc(r[3]), False, r[4]) for r in rows]
        if rows:
            first_anchor = [_cursor_value(v) for v in rows[0][5:]]
            last_anchor = [_cursor_value(v) for v in rows[-1][5:]]
            has_next = more if not backwards else True
            has_prev = (anchor is not None) if not backwards else more
            page.next_cursor = _encode_cursor("next", last_anchor) if has_next else None
            page.previous_cursor = _encode_cursor("prev", first_anchor) if has_prev else None
        if query.includes:
            page.included = self._includes(session, page.matches, query)
        return page

    def _criterion(self, resource_type: str, criterion: Criterion) -> ColumnElement[bool]:
        R, I = self.R, self.I
        if criterion.name == "_id":
            clause = col(R.id).in_(criterion.values)
            return not_(clause) if criterion.modifier == "not" else clause
        if criterion.name == "_lastUpdated":
            return or_(*[_date_clause(R.last_updated, R.last_updated, criterion.name, v) for v in criterion.values])
        base = and_(I.resource_type == resource_type, I.resource_id == R.id, I.param == criterion.name)
        if criterion.modifier == "missing":
            present = exists(select(I.pk).where(base))
            return not_(present) if criterion.values[0] == "true" else present
        value_clauses = [self._value_clause(criterion, v) for v in criterion.values]
        matched = exists(select(I.pk).where(base, or_(*value_clauses)))
        return not_(matched) if criterion.modifier == "not" else matched

    def _value_clause(self, criterion: Criterion, value: str) -> ColumnElement[bool]:
        I = self.I
        if criterion.type == "string":
            if criterion.modifier == "exact":
                return col(I.value) == value
            pattern = _like_escape(normalise(value))
            if criterion.modifier == "contains":
                return col(I.norm).like(f"%{pattern}%", escape="\\")
            return col(I.norm).like(f"{pattern}%", escape="\\")
        if criterion.type == "token":
            if "|" in value:
                system, code = value.split("|", 1)
                if not system:
                    return and_(I.system.is_(None), I.value == code)
                if not code:
                    return col(I.system) == system
                return and_(I.system == system, I.value == code)
            return col(I.value) == value
        if criterion.type == "reference":
            if "/" in value or "://" in value:
                return col(I.value) == value
            return or_(col(I.value) == value, col(I.value).like(f"%/{_like_escape(value)}", escape="\\"))
        if criterion.type == "date":
            return _date_clause(I.low, I.high, criterion.name, value)
        return col(I.value) == value  # uri: exact match

    def _sort_expressions(self, query: SearchQuery) -> list[tuple[Any, bool]]:
        R, I = self.R, self.I
        keys: list[tuple[Any, bool]] = []
        for key in query.sort:
            if key.name == "_lastUpdated":
                keys.append((R.last_updated, key.descending))
            elif key.name == "_id":
                keys.append((R.id, key.descending))
            else:
                sub = (select(func.min(func.coalesce(I.norm, I.value)))
                       .where(I.resource_type == query.resource_type, I.resource_id == R.id, I.param == key.name)
                       .scalar_subquery())
                keys.append((func.coalesce(sub, ""), key.descending))
        if not any(expr is R.id for expr, _ in keys):
            keys.append((R.id, False))
        return keys

    def _includes(self, session: Session, matches: Sequence[StoredResource],
                  query: SearchQuery) -> list[StoredResource]:
        seen = {(m.resource_type, m.id) for m in matches}
        included: list[StoredResource] = []
        frontier, first_round = list(matches), True
        while frontier:
            found: list[StoredResource] = []
            for source_type, param, target, iterate in query.includes:
                defn = self.search_params.get(source_type, {}).get(param)
                if defn is None or not (first_round or iterate):
                    continue
                for source in (m for m in frontier if m.resource_type == source_type):
                    for value in extract(defn, source.parsed()):
                        target_row = self._resolve(session, value.value or "", target, defn.targets)
                        if target_row and (target_row.resource_type, target_row.id) not in seen:
                            seen.add((target_row.resource_type, target_row.id))
                            found.append(target_row)
            included.extend(found)
            if not any(iterate for *_, iterate in query.includes):
                break
            frontier, first_round = found, False
        return included

    def _resolve(self, session: Session, reference: str, target: str | None,
                 allowed: Iterable[str]) -> StoredResource | None:
        allowed = tuple(allowed)
        if "://" in reference:
            url, _, version = reference.partition("|")
            found = self.find_canonical(session, url, version or None, target)
        else:
            resource_type, _, resource_id = reference.rpartition("/")
            if not resource_type or (target and resource_type != target):
                return None
            row = self._row(session, resource_type, resource_id)
            found = self._stored(row) if row is not None and not row.deleted else None
        if found and allowed and found.resource_type not in allowed:
            return None
        return found

    @staticmethod
    def _stored(row: Any) -> StoredResource:
        return StoredResource(row.resource_type, row.id, row.version_id, as_utc(row.last_updated), row.deleted,
                              row.content, getattr(row, "method", "PUT"))


# --------------------------------------------------------------------- helpers


def _live(resource_type: str, resource_id: str, current: StoredResource | None) -> StoredResource:
    """The current version a read answers with; 404 when there is none, 410 when it is a deletion."""
    if current is None:
        raise NotFound(f"{resource_type}/{resource_id} is not known")
    if current.deleted:
        raise Gone(f"{resource_type}/{resource_id} was deleted", headers={"ETag": f'W/"{current.version_id}"'})
    return current


_NEW_ROW_COLUMNS = (
    ("resource_type", "id", "version_id", "last_updated", "deleted", "content", "url", "version"),
    ("resource_type", "id", "version_id", "last_updated", "deleted", "content", "method"),
    ("resource_type", "resource_id", "param", "system", "value", "norm", "low", "high"),
)
"""The columns `_new_rows` fills, per table (current, history, index)."""


def _as_version(given: dict[str, Any], resource_id: str, version_id: int,
                now: datetime) -> tuple[dict[str, Any], bytes]:
    """The resource as stored for this version (its id and meta set, keys in FHIR order) and its bytes."""
    resource = dict(given)
    resource["id"] = resource_id
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    resource["meta"] = {"versionId": str(version_id), "lastUpdated": instant(now), **meta}
    resource = _ordered(resource)
    return resource, orjson.dumps(resource)


def _ordered(resource: dict[str, Any]) -> dict[str, Any]:
    """resourceType, id and meta first: the conventional order clients expect to read."""
    head = {k: resource[k] for k in ("resourceType", "id", "meta") if k in resource}
    return head | {k: v for k, v in resource.items() if k not in head}


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _version_key(version: str | None) -> tuple[Any, ...]:
    if not version:
        return ()
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in version.replace("-", ".").split("."))


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _date_clause(low_col: Mapped[datetime | None], high_col: Mapped[datetime | None], name: str,
                 value: str) -> ColumnElement[bool]:
    prefix, low, high = parse_date_criterion(name, value)
    if prefix == "eq":
        return and_(low_col >= low, high_col <= high)
    if prefix == "ne":
        return or_(low_col < low, high_col > high)
    if prefix == "gt":
        return high_col > high
    if prefix == "lt":
        return low_col < low
    if prefix == "ge":
        return high_col >= low
    if prefix == "le":
        return low_col <= high
    return true()


def _keyset(keys: list[tuple[Any, bool]], anchor: list[Any], backwards: bool) -> ColumnElement[bool]:
    """Rows strictly after (or before) the anchor row in the sort order."""
    clauses = []
    for i, (expr, descending) in enumerate(keys):
        value = anchor[i]
        after = (expr < value) if (descending != backwards) else (expr > value)
        equal_prefix = [keys[j][0] == anchor[j] for j in range(i)]
        clauses.append(and_(*equal_prefix, after))
    return or_(*clauses)


def _cursor_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"t": as_utc(value).isoformat()}
    return value


def _encode_cursor(direction: str, anchor: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([direction, anchor])).decode().rstrip("=")


def _anchor_value(value: Any) -> str | datetime:
    """A sort key value from a cursor: text (ids, search values) or an instant ({"t": ISO 8601}), as
    `_cursor_value` writes them; anything else (null, a list, a number) is a forged cursor."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("t"), str):
        return datetime.fromisoformat(value["t"])
    raise ValueError


def _decode_cursor(cursor: str, n_keys: int) -> tuple[str, list[Any]]:
    try:
        direction, anchor = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if direction not in ("next", "prev") or not isinstance(anchor, list) or len(anchor) != n_keys:
            raise ValueError
        values = [_anchor_value(v) for v in anchor]
    except (ValueError, TypeError, KeyError, orjson.JSONDecodeError):
        raise BadRequest("The paging cursor is not valid for this search; start again from the first page",
                         expression="_cursor") from None
    return direction, values
