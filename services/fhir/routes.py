"""What a FHIR REST request names, read from its method and URL (R4 http.html).

The one parser of the FHIR URL grammar. The edge parses each request once and keeps the
result in the ASGI scope (`fhir_request`); access control (which scope a request needs),
the audit trail (what was touched, and how) and the read route (which requests it answers)
read it from there, and batch/transaction entries go through `parse_entry_url`:

    [base]                        POST batch / transaction
    [base]/[type]                 GET search-type, POST create
    [base]/[type]/_search         POST search-type
    [base]/[type]/_history        GET history-type
    [base]/[type]/[id]            GET read, PUT update, PATCH patch, DELETE delete
    [base]/[type]/[id]/_history   GET history-instance
    [base]/[type]/[id]/_history/[vid]  GET vread
    [base]/$op, [base]/[type]/$op, [base]/[type]/[id]/$op   operation

HEAD is parsed as GET. Anything else under the base is `None`: no interaction this server
knows of. FastAPI's route table still dispatches the requests the read route does not take.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.types import Scope

from services.fhir.searchparams import FHIR_ID

FHIR_PREFIX = "/fhir"
RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
OPERATION = re.compile(r"^\$[A-Za-z][A-Za-z0-9\-]{0,63}$")
REQUEST_SCOPE_KEY = "cicatrix.fhir_request"
CACHED_PATH_LENGTH = 200
"""Paths up to this long are parsed once per process (`parse_cached`); longer ones every time."""

# interaction -> the SMART permission letter it needs (operations are decided per service)
LETTER = {"read": "r", "vread": "r", "history-instance": "r", "search-type": "s", "history-type": "s",
          "create": "c", "update": "u", "patch": "u", "delete": "d"}


@dataclass(frozen=True)
class FhirRequest:
    interaction: str
    """read | vread | history-instance | history-type | search-type | create | update | patch | delete |
    operation | batch | search-system | history-system | capabilities"""
    resource_type: str | None = None
    resource_id: str | None = None
    version_id: str | None = None
    operation: str | None = None
    """The operation's name without `$` (`generate`)."""

    @property
    def letter(self) -> str | None:
        return LETTER.get(self.interaction)

    @property
    def target(self) -> str | None:
        """`Type/id` when the URL names one resource."""
        return f"{self.resource_type}/{self.resource_id}" if self.resource_type and self.resource_id else None


class InvalidId(ValueError):
    """A URL segment in an id position is not a FHIR id (`[A-Za-z0-9\\-.]{1,64}`)."""

    def __init__(self, segment: str) -> None:
        super().__init__(segment)
        self.segment = segment


def _id(segment: str) -> str:
    if not FHIR_ID.match(segment):
        raise InvalidId(segment)
    return segment


def parse(method: str, path: str, *, prefix: str = FHIR_PREFIX) -> FhirRequest | None:
    """The interaction at `method path`, None for paths outside the FHIR grammar; raises InvalidId."""
    if path != prefix and not path.startswith(prefix + "/"):
        return None
    method = "GET" if method == "HEAD" else method
    parts = [p for p in path[len(prefix):].split("/") if p != ""]
    if not parts:
        return {"POST": FhirRequest("batch"), "GET": FhirRequest("search-system")}.get(method)
    head, rest = parts[0], parts[1:]
    if OPERATION.match(head) and not rest:
        return FhirRequest("operation", operation=head[1:])
    if head == "metadata" and not rest:
        return FhirRequest("capabilities") if method == "GET" else None
    if head == "_history" and not rest:
        return FhirRequest("history-system") if method == "GET" else None
    if not RESOURCE_TYPE.match(head):
        return None
    return _on_type(method, head, rest)


def _on_type(method: str, resource_type: str, rest: list[str]) -> FhirRequest | None:
    if not rest:
        kind = {"GET": "search-type", "POST": "create"}.get(method)
        return FhirRequest(kind, resource_type) if kind else None
    first = rest[0]
    if len(rest) == 1 and first == "_search":
        return FhirRequest("search-type", resource_type) if method == "POST" else None
    if len(rest) == 1 and first == "_history":
        return FhirRequest("history-type", resource_type) if method == "GET" else None
    if len(rest) == 1 and OPERATION.match(first):
        return FhirRequest("operation", resource_type, operation=first[1:])
    resource_id = _id(first)
    tail = rest[1:]
    if not tail:
        kind = {"GET": "read", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)
        return FhirRequest(kind, resource_type, resource_id) if kind else None
    if tail == ["_history"]:
        return FhirRequest("history-instance", resource_type, resource_id) if method == "GET" else None
    if len(tail) == 2 and tail[0] == "_history":
        return FhirRequest("vread", resource_type, resource_id, _id(tail[1])) if method == "GET" else None
    if len(tail) == 1 and OPERATION.match(tail[0]):
        return FhirRequest("operation", resource_type, resource_id, operation=tail[0][1:])
    return None


@functools.lru_cache(maxsize=4096)
def _parse_once(method: str, path: str, prefix: str) -> FhirRequest | None:
    return parse(method, path, prefix=prefix)


def parse_cached(method: str, path: str, *, prefix: str = FHIR_PREFIX) -> FhirRequest | None:
    """`parse`, remembered: the same URLs come again and again (reads of popular resources). Invalid ids
    still raise every time, and long paths are not kept (the cache stays small whatever clients send)."""
    if len(path) > CACHED_PATH_LENGTH:
        return parse(method, path, prefix=prefix)
    return _parse_once(method, path, prefix)


def fhir_request(scope: Scope, *, prefix: str = FHIR_PREFIX) -> FhirRequest | None:
    """The request's parse, kept in its ASGI scope: the edge puts it there; parsed here (once) when the
    request did not cross the edge. Raises InvalidId."""
    if REQUEST_SCOPE_KEY in scope:
        known: FhirRequest | None = scope[REQUEST_SCOPE_KEY]
        return known
    request = parse_cached(scope["method"], scope["path"], prefix=prefix)
    scope[REQUEST_SCOPE_KEY] = request
    return request


def parse_entry_url(method: str, url: str, *, prefix: str = FHIR_PREFIX) -> FhirRequest | None:
    """A batch/transaction `entry.request` (`Type/id`, `Type?query`, or an absolute URL) as a request."""
    path = urlsplit(url).path if "://" in url else url.split("?", 1)[0]
    if "://" in url:
        at = path.find(prefix + "/")
        path = path[at + len(prefix):] if at >= 0 else path
    return parse(method.upper(), f"{prefix}/{path.lstrip('/')}", prefix=prefix)
