"""The FHIR RESTful interactions on resource types, as entries of each service's interaction table.

vread, history-instance, search-type (GET and POST `_search`), create,
update (If-Match required), patch, delete and `$validate`, over a `ResourceStore`;
the read itself is `fastread.ReadRoute`, ahead of FastAPI's routing. A service chooses
which types and interactions it offers and may add a write hook for its own
business rules (the catalog's `url` + `version` uniqueness, say). A type with an
update rule (services.fhir.revisions) is updated and patched under that rule only,
even where no other write is offered (a stored CarePlan's status, say).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from services.fhir.bundles import history, searchset
from services.fhir.conditional import required_version, version_from_etag
from services.fhir.deps import ContextDep, ServiceContext, SessionDep
from services.fhir.fastread import FastReads
from services.fhir.interaction_table import Entry, Permission
from services.fhir.jsonio import FORM_BODY_TYPE, loads, media_type, read_json, read_resource
from services.fhir.limits import limit
from services.fhir.outcome import (
    BadRequest,
    FhirError,
    Issue,
    MethodNotAllowed,
    NotFound,
    UnsupportedMediaType,
    operation_outcome,
)
from services.fhir.patch import JSON_PATCH, apply_json_patch
from services.fhir.responses import FhirResponse
from services.fhir.rest import content_etag_response, fhir_base, read_response, write_response
from services.fhir.revisions import Change, UpdateRule, revise
from services.fhir.searchparams import SearchParamDef, parse_query
from services.fhir.store import ResourceStore, StoredResource
from services.fhir.validation import check_r4, r4_issues

VALIDATE_DEFINITION = "http://hl7.org/fhir/OperationDefinition/Resource-validate"
WriteHook = Callable[[Session, dict[str, Any], str | None], None]
"""Called with (session, resource, id or None for create) before a write; raises FhirError to refuse it."""


@dataclass
class ResourceInteractions:
    store: ResourceStore
    types: Sequence[str]
    search_params: Mapping[str, Mapping[str, SearchParamDef]]
    sortable: Sequence[str] = ()
    writable: Sequence[str] = ()
    before_write: WriteHook | None = None
    search_hook: Callable[[Request, str, list[tuple[str, str]]], list[tuple[str, str]]] | None = None
    """May add criteria to a search (access control narrows searches this way)."""
    read_hook: Callable[[Request, StoredResource], None] | None = None
    includable: dict[str, Mapping[str, SearchParamDef]] = field(default_factory=dict)
    update_rules: Mapping[str, UpdateRule] = field(default_factory=dict)
    """Types updated and patched under their own rule (services.fhir.revisions), writable or not."""

    def __post_init__(self) -> None:
        self.includable = {t: {n: d for n, d in self.search_params.get(t, {}).items() if d.type == "reference"}
                           for t in self.types}

    def check_type(self, resource_type: str) -> None:
        if resource_type not in self.types:
            raise NotFound(f"Resource type '{resource_type}' is not served here; see /fhir/metadata",
                           expression="resourceType", code="not-supported")

    # ----------------------------------------------------------------- entries

    def entries(self, *, cache_seconds: float = 0.0) -> list[Entry]:
        """This group's entries for the service's interaction table. Each route takes the type from the path
        and answers the types it does not serve with 404 not-supported; the read (and, with `cache_seconds`,
        the search) is answered ahead of FastAPI by `fastread`. Types with an update rule are updated and
        patched on their own paths, so that the others keep no write route at all."""
        fast = FastReads(self.store, frozenset(self.types), self.read_hook,
                         self.search_bundle if self.search_hook is None else None, cache_seconds=cache_seconds)
        served = tuple(self.types)
        entries = [Entry("$validate", self.validate, served, by_type=True, method="POST",
                         permission=Permission("c"), definition=VALIDATE_DEFINITION),
                   Entry("search-type", self.search_post, served, by_type=True, method="POST"),
                   Entry("vread", self.vread, served, by_type=True),
                   Entry("history-instance", self.history, served, by_type=True),
                   Entry("read", self.read, served, by_type=True, ahead=fast.read_route),
                   Entry("search-type", self.search, served, by_type=True, ahead=fast.search_route)]
        if self.writable:
            writable = tuple(self.writable)
            entries += [Entry("create", self.create, writable, by_type=True),
                        Entry("update", self.update, writable, by_type=True),
                        Entry("delete", self.delete, writable, by_type=True)]
        for resource_type in self.update_rules:
            if resource_type not in self.writable:
                entries.append(Entry("update", self._of_type(resource_type, self.update), (resource_type,)))
            entries.append(Entry("patch", self._of_type(resource_type, self.patch), (resource_type,)))
        return entries

    @staticmethod
    def _of_type(resource_type: str, handler: Callable[..., Any]) -> Callable[..., Any]:
        """`handler` on one type's path: the other types of a service that writes only those with a rule keep
        no write route at all."""

        async def endpoint(resource_id: str, request: Request, session: SessionDep, ctx: ContextDep) -> Response:
            result: Response = await handler(resource_type, resource_id, request, session, ctx)
            return result

        endpoint.__name__ = f"{handler.__name__}_{resource_type.lower()}"
        endpoint.__doc__ = handler.__doc__
        return endpoint

    # ------------------------------------------------------------------- reads

    def read(self, resource_type: str, resource_id: str) -> Response:
        """Read the current version (304 when If-None-Match names it)."""
        # The read in the OpenAPI document. Reads of the served types with a FHIR id are answered ahead of FastAPI
        # by `fastread.ReadRoute`, installed from the read entry; what reaches this route names no resource: an
        # unserved type, or a segment no FHIR id can be (`$op`, `_history`, `_search`) that no other route took.
        self.check_type(resource_type)
        if resource_id == "_search":
            raise MethodNotAllowed(f"Search {resource_type} by GET {resource_type}?... or POST {resource_type}/_search")
        what = f"The operation {resource_id}" if resource_id.startswith("$") else f"{resource_type}/{resource_id}"
        raise NotFound(f"{what} is not served on {resource_type} here; see /fhir/metadata", code="not-supported")

    def vread(self, resource_type: str, resource_id: str, version_id: str, request: Request,
              session: SessionDep) -> Response:
        """Read one version."""
        self.check_type(resource_type)
        stored = self.store.vread(session, resource_type, resource_id, version_id)
        if self.read_hook:
            self.read_hook(request, stored)
        return read_response(request, stored)

    def history(self, resource_type: str, resource_id: str, request: Request, session: SessionDep,
                ctx: ContextDep) -> Response:
        """Every version, newest first."""
        self.check_type(resource_type)
        versions = self.store.history(session, resource_type, resource_id, count=1000)
        if self.read_hook:
            for version in versions:
                if not version.deleted:
                    self.read_hook(request, version)
        base = fhir_base(request, ctx.settings.BASE_URL)
        body = history(base, versions, self_url=f"{base}/{resource_type}/{resource_id}/_history")
        return FhirResponse(body)

    async def search(self, resource_type: str, request: Request, ctx: ContextDep) -> Response:
        """Search with FHIR semantics; unknown parameters draw a warning (or 400 under handling=strict)."""
        pairs = parse_qsl(request.url.query, keep_blank_values=True)
        return await self._search(resource_type, pairs, request, ctx)

    async def search_post(self, resource_type: str, request: Request, ctx: ContextDep) -> Response:
        """Search by POST with a form-encoded body (same parameters as GET)."""
        self.check_type(resource_type)
        if media_type(request) != FORM_BODY_TYPE:
            raise FhirError(f"POST _search takes {FORM_BODY_TYPE}", status=415, code="not-supported")
        body = (await request.body()).decode("utf-8", errors="replace")
        pairs = parse_qsl(request.url.query, keep_blank_values=True) + parse_qsl(body, keep_blank_values=True)
        return await self._search(resource_type, pairs, request, ctx)

    async def _search(self, resource_type: str, pairs: list[tuple[str, str]], request: Request,
                      ctx: ServiceContext) -> Response:
        """Parsing, querying and rendering run in the work pool, on a session of their own (work over budget may
        outlive the request)."""
        base = fhir_base(request, ctx.settings.BASE_URL)

        def search() -> bytes:
            with ctx.session() as session:
                return self.search_bundle(resource_type, pairs, request, session, base)

        return content_etag_response(request, await ctx.work.run(search))

    def search_bundle(self, resource_type: str, pairs: list[tuple[str, str]], request: Request, session: Session,
                      base: str) -> bytes:
        """The searchset Bundle bytes of one search (also run by GET entries of batch/transaction Bundles)."""
        self.check_type(resource_type)
        if self.search_hook:
            pairs = self.search_hook(request, resource_type, pairs)
        query = parse_query(resource_type, pairs, self.search_params.get(resource_type, {}),
                            sortable=self.sortable, includable=self.includable.get(resource_type, {}),
                            all_includable=self.includable,
                            max_includes=limit(request.app.state.ctx.settings, "MAX_INCLUDES"))
        warnings: list[Issue] = []
        if query.unknown:
            message = f"Unknown search parameter(s) ignored: {', '.join(query.unknown)}"
            if "handling=strict" in request.headers.get("prefer", ""):
                raise BadRequest(message.replace(" ignored", ""), expression=query.unknown[0], code="not-supported")
            warnings.append(Issue(code="not-supported", severity="warning", diagnostics=message,
                                  expression=tuple(query.unknown)))
            query.passthrough = [(k, v) for k, v in query.passthrough if k not in query.unknown]
        page = self.store.search(session, query)
        if self.read_hook:
            for match in page.matches + page.included:
                self.read_hook(request, match)
        return searchset(base, page, resource_type=resource_type, params=query.passthrough, cursor=query.cursor,
                         summary=query.summary, elements=query.elements, warnings=warnings)

    # ------------------------------------------------------------------ writes

    def check_write(self, session: Session, resource: dict[str, Any], resource_id: str | None) -> None:
        """Every write's validation (R4 + the service's hook); batch/transaction entries run it too."""
        check_r4(resource)
        if self.before_write:
            self.before_write(session, resource, resource_id)

    async def create(self, resource_type: str, request: Request, session: SessionDep, ctx: ContextDep) -> Response:
        """Create with a server-assigned id; 201 with Location and ETag."""
        self.check_writable(resource_type)
        resource = await read_resource(request, expected_type=resource_type)
        resource.pop("id", None)
        await ctx.work.run(check_r4, resource)

        def write() -> StoredResource:
            if self.before_write:
                self.before_write(session, resource, None)
            stored = self.store.create(session, resource)
            session.commit()
            return stored

        stored = await run_in_threadpool(write)
        return write_response(request, stored, base=fhir_base(request, ctx.settings.BASE_URL), created=True)

    async def update(self, resource_type: str, resource_id: str, request: Request, session: SessionDep,
                     ctx: ContextDep) -> Response:
        """Update an existing resource; If-Match with its current version is required."""
        rule = self.update_rules.get(resource_type)
        if rule is None:
            self.check_writable(resource_type)
        if_match = _required_if_match(request)
        resource = await read_resource(request, expected_type=resource_type)
        if resource.get("id") != resource_id:
            raise BadRequest(f"The body's id '{resource.get('id')}' does not match the URL id '{resource_id}'",
                             expression=f"{resource_type}.id")
        if rule is not None:
            return await self._revise(rule, resource_type, resource_id, if_match, lambda _current: resource,
                                      request, session, ctx)
        await ctx.work.run(check_r4, resource)

        def write() -> tuple[StoredResource, bool]:
            if self.before_write:
                self.before_write(session, resource, resource_id)
            result = self.store.update(session, resource_type, resource_id, resource, if_match=if_match)
            session.commit()
            return result

        stored, created = await run_in_threadpool(write)
        return write_response(request, stored, base=fhir_base(request, ctx.settings.BASE_URL), created=created)

    async def patch(self, resource_type: str, resource_id: str, request: Request, session: SessionDep,
                    ctx: ContextDep) -> Response:
        """JSON Patch (RFC 6902) the current version; If-Match with it is required."""
        rule = self.update_rules[resource_type]  # routed for the types with a rule only
        if_match = _required_if_match(request)
        if media_type(request) != JSON_PATCH:
            raise UnsupportedMediaType(f"PATCH takes {JSON_PATCH} (RFC 6902)")
        operations = loads(await request.body())
        return await self._revise(rule, resource_type, resource_id, if_match,
                                  lambda current: apply_json_patch(current, operations), request, session, ctx)

    async def _revise(self, rule: UpdateRule, resource_type: str, resource_id: str, if_match: int, change: Change,
                      request: Request, session: Session, ctx: ServiceContext) -> Response:
        stored, _ = await run_in_threadpool(revise, self.store, session, rule, resource_type, resource_id, if_match,
                                            change)
        return write_response(request, stored, base=fhir_base(request, ctx.settings.BASE_URL), created=False)

    def delete(self, resource_type: str, resource_id: str, request: Request, session: SessionDep) -> Response:
        """Delete (a new, deleted version); later reads answer 410."""
        self.check_writable(resource_type)
        if_match = version_from_etag(request.headers.get("if-match"))
        self.store.read(session, resource_type, resource_id)  # 404 / 410 before anything changes
        self.store.delete(session, resource_type, resource_id, if_match=if_match)
        session.commit()
        outcome = operation_outcome([Issue(code="informational", severity="information",
                                           diagnostics=f"{resource_type}/{resource_id} deleted")])
        return FhirResponse(outcome)

    async def validate(self, resource_type: str, request: Request, ctx: ContextDep) -> Response:
        """$validate: the OperationOutcome a create would give, storing nothing."""
        self.check_type(resource_type)
        body = await read_json(request)
        resource = _resource_from_validate_body(body)
        if resource.get("resourceType") != resource_type:
            raise BadRequest(f"Expected a {resource_type} to validate", expression="resourceType")
        issues = await ctx.work.run(self._validation_issues, ctx, resource)
        if not issues:
            issues = [Issue(code="informational", severity="information",
                            diagnostics=f"The {resource_type} is valid")]
        return FhirResponse(operation_outcome(issues))

    def _validation_issues(self, ctx: ServiceContext, resource: dict[str, Any]) -> list[Issue]:
        issues = r4_issues(resource)
        if not issues and self.before_write:
            with ctx.session() as session:
                try:
                    self.before_write(session, resource, resource.get("id"))
                except FhirError as error:
                    issues = list(error.issues)
        return issues

    def check_writable(self, resource_type: str) -> None:
        self.check_type(resource_type)
        if resource_type not in self.writable:
            raise FhirError(f"{resource_type} cannot be written here", status=405, code="not-supported")


def _required_if_match(request: Request) -> int:
    """The version an update or patch names in If-Match; 400 without one (no blind overwrites)."""
    return required_version(request.headers.get("if-match"),
                            "Updates require an If-Match header with the current version, e.g. W/\"3\"")


def _resource_from_validate_body(body: Any) -> dict[str, Any]:
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        for parameter in body.get("parameter", []):
            resource = parameter.get("resource") if isinstance(parameter, dict) else None
            if isinstance(resource, dict) and parameter.get("name") == "resource":
                return resource
        raise BadRequest("$validate Parameters need a 'resource' parameter", expression="Parameters.parameter")
    if not isinstance(body, dict) or "resourceType" not in body:
        raise BadRequest("$validate takes a resource or Parameters with a 'resource'", code="structure")
    return body
