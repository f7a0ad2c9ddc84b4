"""Batch and transaction Bundles posted to `[base]` (R4 http.html#transaction), for bulk loads by writers.

Every entry runs the checks of the single-resource interactions (`check_writable`,
`check_write`: R4 validation plus the service's write hook, such as the catalog's
`url` + `version` uniqueness) over the same `ResourceStore`; nothing here
re-implements them. A service offers it by adding `BundleProcessor.entries()` to its interaction table.
Per method:

- POST `Type` creates under a server-assigned id. `request.ifNoneExist` is a search
  on the type: no match creates, one match answers `200 OK` with it, several are 412.
- PUT `Type/id` updates. As for the single update, an existing resource needs
  `request.ifMatch` (400 without, 412 when stale). A PUT to an id that does not exist
  (or was deleted) *creates* it under that id (201): writers bulk-loading content keep
  its stable ids. The single PUT does not do this (`updateCreate` stays false there).
- DELETE `Type/id` as the single delete: 404 unknown, 410 deleted, `ifMatch` honoured.
- GET: read (`ifNoneMatch` gives 304), vread, history and search.
- Conditional update and delete (a `?` in a PUT/DELETE url), PATCH and HEAD are refused.

transaction: one database transaction, processed DELETE, POST, PUT, GET (R4 order).
  Placeholder `fullUrl`s (`urn:uuid:`) are rewritten in every `Reference.reference`
  of the entries' resources; `ifNoneExist` conditions are evaluated after the deletes
  and before any create, so a placeholder can map to a matched resource. The first
  failing entry fails everything: its status and an OperationOutcome naming
  `Bundle.entry[i]`; nothing is stored.
batch: entries in their order, each on its own SAVEPOINT; a failure rolls back that
  entry only and is answered in its `response.outcome`. Batch entries may not depend
  on one another (R4), so placeholders are not rewritten.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import Request
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from services.fhir import interaction_table
from services.fhir.bundles import history
from services.fhir.conditional import entry_none_match, none_exist_query, version_from_etag
from services.fhir.deps import ContextDep, SessionDep
from services.fhir.interactions import ResourceInteractions
from services.fhir.jsonio import read_json
from services.fhir.outcome import (
    BadRequest,
    FhirError,
    Gone,
    Issue,
    MethodNotAllowed,
    NotFound,
    PreconditionFailed,
)
from services.fhir.references import is_placeholder, rewrite_references
from services.fhir.responses import FhirResponse, etag
from services.fhir.rest import fhir_base
from services.fhir.routes import InvalidId, parse_entry_url
from services.fhir.searchparams import parse_query
from services.fhir.store import StoredResource, instant

TRANSACTION_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3}
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH")


@dataclass
class Entry:
    """One request entry, parsed and checked for shape before anything runs."""

    index: int
    method: str
    url: str
    resource_type: str
    resource_id: str | None = None
    version_id: str | None = None
    history: bool = False
    query: str = ""
    resource: dict[str, Any] | None = None
    full_url: str | None = None
    if_match: int | None = None
    if_none_match: str | None = None
    if_none_exist: str | None = None

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"


@dataclass(frozen=True)
class Result:
    """What one entry did: its HTTP status and the stored version or Bundle it answers with."""

    status: int
    stored: StoredResource | None = None
    body: bytes | None = None
    outcome: dict[str, Any] | None = None
    location: bool = False


@dataclass(frozen=True)
class CreatePlan:
    """The id a POST entry will have: a fresh one, or that of the resource its ifNoneExist matched."""

    id: str
    existing: StoredResource | None = None


class BundleProcessor:
    """`POST [base]` with a batch or transaction Bundle, over the service's resource interactions."""

    def __init__(self, interactions: ResourceInteractions) -> None:
        self.interactions = interactions
        self.store = interactions.store

    def entries(self) -> list[interaction_table.Entry]:
        return [interaction_table.Entry(kind, self.process, tag="system") for kind in ("batch", "transaction")]

    async def process(self, request: Request, session: SessionDep, ctx: ContextDep) -> Response:
        """Process a batch or a transaction Bundle; answer the matching -response Bundle."""
        body = await read_json(request)
        kind, raw_entries = _bundle_parts(body)
        base = fhir_base(request, ctx.settings.BASE_URL)
        run = self.transaction if kind == "transaction" else self.batch
        results = await run_in_threadpool(run, session, raw_entries, request, base)
        minimal = "return=minimal" in request.headers.get("prefer", "")
        return FhirResponse(response_bundle(f"{kind}-response", results, base, minimal=minimal))

    # -- transaction --------------------------------------------------------------------------------

    def transaction(self, session: Session, raw_entries: Sequence[Any], request: Request, base: str) -> list[Result]:
        """All entries in one database transaction, or none of them."""
        entries = [parse_entry(i, raw, base) for i, raw in enumerate(raw_entries)]
        _check_distinct(entries)
        results: dict[int, Result] = {}
        current: Entry | None = None
        try:
            for current in [e for e in entries if e.method == "DELETE"]:
                results[current.index] = self._delete(session, current)
            plans = {}
            for current in [e for e in entries if e.method == "POST"]:
                plans[current.index] = self._plan_create(session, current, request)
            current = None
            mapping = _placeholder_targets(entries, plans)
            for entry in entries:
                if entry.resource is not None and mapping:
                    entry.resource = rewrite_references(entry.resource, mapping)
            for current in sorted((e for e in entries if e.method != "DELETE"),
                                  key=lambda e: TRANSACTION_ORDER[e.method]):
                results[current.index] = self._run(session, current, request, base, plans.get(current.index))
        except FhirError as error:
            session.rollback()
            raise located(error, current) from None
        session.commit()
        return [results[e.index] for e in entries]

    # -- batch --------------------------------------------------------------------------------------

    def batch(self, session: Session, raw_entries: Sequence[Any], request: Request, base: str) -> list[Result]:
        """Each entry on its own savepoint: a failure undoes that entry only."""
        _open_transaction(session)
        results = [self._batch_entry(session, i, raw, request, base) for i, raw in enumerate(raw_entries)]
        session.commit()
        return results

    def _batch_entry(self, session: Session, index: int, raw: Any, request: Request, base: str) -> Result:
        entry: Entry | None = None
        try:
            entry = parse_entry(index, raw, base)
            with session.begin_nested():
                return self._run(session, entry, request, base)
        except FhirError as error:
            failure = located(error, entry, index)
            return Result(failure.status, outcome=failure.operation_outcome())

    # -- one entry ----------------------------------------------------------------------------------

    def _run(self, session: Session, entry: Entry, request: Request, base: str,
             plan: CreatePlan | None = None) -> Result:
        if entry.method == "POST":
            return self._create(session, entry, plan or self._plan_create(session, entry, request))
        if entry.method == "PUT":
            return self._update(session, entry)
        if entry.method == "DELETE":
            return self._delete(session, entry)
        return self._get(session, entry, request, base)

    def _plan_create(self, session: Session, entry: Entry, request: Request) -> CreatePlan:
        self.interactions.check_writable(entry.resource_type)
        existing = self._conditional_match(session, entry, request) if entry.if_none_exist else None
        return CreatePlan(existing.id if existing else str(uuid.uuid4()), existing)

    def _conditional_match(self, session: Session, entry: Entry, request: Request) -> StoredResource | None:
        """The one resource `ifNoneExist` matches (None: create); 412 when several do."""
        where = f"{entry.where}.request.ifNoneExist"
        pairs = none_exist_query(entry.if_none_exist or "")
        if self.interactions.search_hook:
            pairs = self.interactions.search_hook(request, entry.resource_type, pairs)
        query = parse_query(entry.resource_type, pairs, self.interactions.search_params.get(entry.resource_type, {}))
        if query.unknown or not query.criteria:
            problem = f"unknown parameter(s) {', '.join(query.unknown)}" if query.unknown else "no search criteria"
            raise BadRequest(f"ifNoneExist '{entry.if_none_exist}' has {problem}", expression=where)
        query.count = 2
        matches = self.store.search(session, query).matches
        if len(matches) > 1:
            raise PreconditionFailed(f"ifNoneExist '{entry.if_none_exist}' matches more than one "
                                     f"{entry.resource_type}", expression=where)
        if matches and self.interactions.read_hook:
            self.interactions.read_hook(request, matches[0])
        return matches[0] if matches else None

    def _create(self, session: Session, entry: Entry, plan: CreatePlan) -> Result:
        if plan.existing is not None:
            return Result(200, stored=plan.existing, location=True)
        resource = {k: v for k, v in (entry.resource or {}).items() if k != "id"}
        self.interactions.check_write(session, resource, None)
        return Result(201, stored=self.store.create(session, resource, resource_id=plan.id), location=True)

    def _update(self, session: Session, entry: Entry) -> Result:
        self.interactions.check_writable(entry.resource_type)
        resource, resource_id = entry.resource or {}, entry.resource_id or ""
        if resource.get("id") != resource_id:
            raise BadRequest(f"The resource's id '{resource.get('id')}' does not match the request url id "
                             f"'{resource_id}'", expression=f"{entry.where}.resource.id")
        if entry.if_match is None and self._is_live(session, entry.resource_type, resource_id):
            raise BadRequest("A PUT of an existing resource requires request.ifMatch with its current version, "
                             'e.g. W/"3"', expression=f"{entry.where}.request.ifMatch", code="required")
        self.interactions.check_write(session, resource, resource_id)
        stored, created = self.store.update(session, entry.resource_type, resource_id, resource,
                                            if_match=entry.if_match, create_if_missing=True)
        return Result(201 if created else 200, stored=stored, location=True)

    def _is_live(self, session: Session, resource_type: str, resource_id: str) -> bool:
        try:
            self.store.read(session, resource_type, resource_id)
        except (NotFound, Gone):
            return False
        return True

    def _delete(self, session: Session, entry: Entry) -> Result:
        self.interactions.check_writable(entry.resource_type)
        resource_id = entry.resource_id or ""
        self.store.read(session, entry.resource_type, resource_id)  # 404 / 410, as the single delete
        deleted = self.store.delete(session, entry.resource_type, resource_id, if_match=entry.if_match)
        return Result(204, stored=deleted)

    def _get(self, session: Session, entry: Entry, request: Request, base: str) -> Result:
        self.interactions.check_type(entry.resource_type)
        if entry.resource_id is None:
            pairs = parse_qsl(entry.query, keep_blank_values=True)
            return Result(200, body=self.interactions.search_bundle(entry.resource_type, pairs, request, session,
                                                                    base))
        if entry.history:
            versions = self.store.history(session, entry.resource_type, entry.resource_id, count=1000)
            for version in versions:
                if self.interactions.read_hook and not version.deleted:
                    self.interactions.read_hook(request, version)
            self_url = f"{base}/{entry.resource_type}/{entry.resource_id}/_history"
            return Result(200, body=history(base, versions, self_url=self_url))
        if entry.version_id is not None:
            stored = self.store.vread(session, entry.resource_type, entry.resource_id, entry.version_id)
        else:
            stored = self.store.read(session, entry.resource_type, entry.resource_id)
        if self.interactions.read_hook:
            self.interactions.read_hook(request, stored)
        if entry.if_none_match and entry_none_match(entry.if_none_match, stored.version_id,
                                                    name=f"{entry.where}.request.ifNoneMatch"):
            return Result(304, stored=stored)
        return Result(200, stored=stored)


# ------------------------------------------------------------------ parsing


def _bundle_parts(body: Any) -> tuple[str, list[Any]]:
    """(`batch` | `transaction`, the raw entries); anything else posted to [base] is a 400."""
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise BadRequest("POST [base] takes a batch or transaction Bundle", expression="resourceType")
    kind = body.get("type")
    if kind not in ("batch", "transaction"):
        raise BadRequest(f"Bundle.type must be batch or transaction, not '{kind}'", expression="Bundle.type",
                         code="value" if kind else "required")
    entries = body.get("entry", [])
    if not isinstance(entries, list):
        raise BadRequest("Bundle.entry must be an array", expression="Bundle.entry", code="structure")
    return kind, entries


def parse_entry(index: int, raw: Any, base: str) -> Entry:
    """The entry's request, checked for shape (method, url form, resource type)."""
    where = f"Bundle.entry[{index}]"
    request = raw.get("request") if isinstance(raw, dict) else None
    if not isinstance(request, dict):
        raise BadRequest(f"{where} has no request", expression=f"{where}.request", code="required")
    method, url = request.get("method"), request.get("url")
    if method not in METHODS:
        raise BadRequest(f"{where}.request.method must be one of {', '.join(METHODS)}",
                         expression=f"{where}.request.method", code="value")
    if method in ("HEAD", "PATCH"):
        raise MethodNotAllowed(f"{method} is not supported in a Bundle here", expression=f"{where}.request.method")
    if not isinstance(url, str) or not url.strip("/"):
        raise BadRequest(f"{where}.request.url is required", expression=f"{where}.request.url", code="required")
    entry = _entry_target(index, method, _relative(url, base, where))
    entry.full_url = raw.get("fullUrl") if isinstance(raw.get("fullUrl"), str) else None
    entry.if_match = version_from_etag(request.get("ifMatch"), name=f"{where}.request.ifMatch")
    entry.if_none_match = request.get("ifNoneMatch")
    entry.if_none_exist = request.get("ifNoneExist")
    if method in ("POST", "PUT"):
        entry.resource = _entry_resource(raw, entry)
    return entry


def _relative(url: str, base: str, where: str) -> str:
    if url.startswith(base + "/"):
        return url[len(base) + 1:]
    if "://" in url.split("?", 1)[0]:
        raise BadRequest(f"{where}.request.url '{url}' is not on this server", expression=f"{where}.request.url")
    return url.lstrip("/")


ENTRY_INTERACTIONS = {"POST": ("create",), "PUT": ("update",), "DELETE": ("delete",),
                      "GET": ("read", "vread", "history-instance", "search-type")}
"""What an entry's method may name in a Bundle served here (no operations, no system-level entries)."""


def _entry_target(index: int, method: str, url: str) -> Entry:
    """What the url names for this method, read by the one FHIR URL parser (`routes.parse_entry_url`):
    a type, an instance, a version, a history or a search."""
    where = f"Bundle.entry[{index}].request.url"
    query = url.partition("?")[2]
    try:
        named = parse_entry_url(method, url)
    except InvalidId as exc:
        raise BadRequest(f"'{exc.segment}' in '{url}' is not a FHIR id", expression=where) from None
    if named is not None and query and method in ("PUT", "DELETE"):
        raise BadRequest(f"Conditional {method.lower()} ('{url}') is not supported; name the resource as Type/id",
                         expression=where, code="not-supported")
    if (named is None or named.resource_type is None or named.interaction not in ENTRY_INTERACTIONS[method]
            or (query and named.interaction != "search-type")):
        shapes = {"POST": "Type", "PUT": "Type/id", "DELETE": "Type/id",
                  "GET": "Type/id, Type/id/_history[/vid] or Type?query"}
        raise BadRequest(f"A {method} entry's url must be {shapes[method]}, not '{url}'", expression=where)
    return Entry(index=index, method=method, url=url, resource_type=named.resource_type,
                 resource_id=named.resource_id, version_id=named.version_id,
                 history=named.interaction == "history-instance", query=query)


def _entry_resource(raw: dict[str, Any], entry: Entry) -> dict[str, Any]:
    resource = raw.get("resource")
    if not isinstance(resource, dict):
        raise BadRequest(f"A {entry.method} entry needs a resource", expression=f"{entry.where}.resource",
                         code="required")
    if resource.get("resourceType") != entry.resource_type:
        raise BadRequest(f"The entry's resource is a {resource.get('resourceType')} but its url names "
                         f"{entry.resource_type}", expression=f"{entry.where}.resource.resourceType")
    return dict(resource)


def _check_distinct(entries: Sequence[Entry]) -> None:
    """R4: fullUrls are unique, and a transaction may not modify one resource twice."""
    full_urls: set[str] = set()
    targets: set[tuple[str, str]] = set()
    for entry in entries:
        if entry.full_url:
            if entry.full_url in full_urls:
                raise BadRequest(f"fullUrl {entry.full_url} appears twice", expression=f"{entry.where}.fullUrl")
            full_urls.add(entry.full_url)
        if entry.method in ("PUT", "DELETE") and entry.resource_id:
            target = (entry.resource_type, entry.resource_id)
            if target in targets:
                raise BadRequest(f"{target[0]}/{target[1]} is modified by more than one entry",
                                 expression=f"{entry.where}.request.url")
            targets.add(target)


def _placeholder_targets(entries: Iterable[Entry], plans: dict[int, CreatePlan]) -> dict[str, str]:
    """urn:uuid fullUrl -> `Type/id` for every entry that creates or names a resource."""
    mapping: dict[str, str] = {}
    for entry in entries:
        if entry.full_url is None or not is_placeholder(entry.full_url):
            continue
        if entry.method == "POST":
            mapping[entry.full_url] = f"{entry.resource_type}/{plans[entry.index].id}"
        elif entry.method == "PUT" and entry.resource_id:
            mapping[entry.full_url] = f"{entry.resource_type}/{entry.resource_id}"
    return mapping


def _open_transaction(session: Session) -> None:
    """Make sure SAVEPOINTs nest inside a real transaction.

    pysqlite begins its transaction lazily, at the first INSERT/UPDATE/DELETE; a
    SAVEPOINT taken before that becomes the outermost transaction, and releasing it
    commits on the spot. PostgreSQL needs nothing."""
    connection = session.connection()
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None, "a Connection checked out of the pool holds its DBAPI connection"
    if connection.dialect.name == "sqlite" and not dbapi_connection.in_transaction:
        connection.exec_driver_sql("BEGIN")


# ------------------------------------------------------------------ errors and answers


def located(error: FhirError, entry: Entry | None, index: int | None = None) -> FhirError:
    """The same error, its issues pointing into `Bundle.entry[i]` (resource paths, request fields)."""
    position = entry.index if entry is not None else index
    if position is None:
        return error
    prefix = f"Bundle.entry[{position}]"
    label = f"{prefix} ({entry.method} {entry.url}): " if entry is not None else f"{prefix}: "
    issues = [Issue(code=issue.code, severity=issue.severity,
                    diagnostics=issue.diagnostics if issue.diagnostics.startswith(prefix) else
                    label + issue.diagnostics,
                    expression=_entry_expressions(issue.expression, prefix, entry, error.status))
              for issue in error.issues]
    return FhirError(issues[0].diagnostics, issues=issues, status=error.status)


def _entry_expressions(expressions: Sequence[str], prefix: str, entry: Entry | None,
                       status: int) -> tuple[str, ...]:
    resource_type = entry.resource_type if entry is not None else None
    mapped = []
    for expression in expressions:
        if expression.startswith("Bundle.entry["):
            mapped.append(expression)
        elif resource_type and expression.split(".", 1)[0].split("[", 1)[0] == resource_type:
            mapped.append(f"{prefix}.resource{expression[len(resource_type):]}")
        elif expression == "If-Match":
            mapped.append(f"{prefix}.request.ifMatch")
        else:  # ids, search parameters, the type: all came from the request url
            mapped.append(f"{prefix}.request.url")
    if not mapped:  # the store's version conflicts say nothing more: they come from ifMatch
        mapped.append(f"{prefix}.request.ifMatch" if status == 412 else prefix)
    return tuple(mapped)


def status_line(status: int) -> str:
    return f"{status} {HTTPStatus(status).phrase}"


def response_bundle(kind: str, results: Sequence[Result], base: str, *, minimal: bool) -> dict[str, Any]:
    """The batch-response / transaction-response Bundle, one entry per request entry in the original order."""
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": kind}
    seen: set[tuple[str, int]] = set()
    entries = []
    for result in results:
        entry = _response_entry(result, base, minimal=minimal)
        if "fullUrl" in entry:  # bdl-7: one resource version, one fullUrl (a read after a write repeats it)
            key = (entry["fullUrl"], result.stored.version_id if result.stored else 0)
            if key in seen:
                del entry["fullUrl"]
            seen.add(key)
        entries.append(entry)
    if entries:  # FHIR JSON has no empty arrays
        bundle["entry"] = entries
    return bundle


def _response_entry(result: Result, base: str, *, minimal: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    response: dict[str, Any] = {"status": status_line(result.status)}
    stored = result.stored
    if stored is not None:
        if stored.content is not None and not stored.deleted and not minimal and result.status != 304:
            entry["fullUrl"] = f"{base}/{stored.resource_type}/{stored.id}"
            entry["resource"] = stored.parsed()
        if result.location:
            response["location"] = f"{stored.resource_type}/{stored.id}/_history/{stored.version_id}"
        response["etag"] = etag(stored.version_id)
        response["lastModified"] = instant(stored.last_updated)
    elif result.body is not None and not minimal:
        entry["resource"] = orjson.loads(result.body)
    if result.outcome is not None:
        response["outcome"] = result.outcome
    entry["response"] = response
    return entry
