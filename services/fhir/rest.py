"""HTTP conventions of FHIR REST (R4 http.html) that every route shares.

ETag and Last-Modified on every resource answer (their preconditions are `conditional`'s),
Location on writes, `Prefer: return=...`, and the public base URL used in links.
"""

from __future__ import annotations

import hashlib

from starlette.requests import Request
from starlette.responses import Response

from services.fhir.conditional import none_match, not_modified
from services.fhir.outcome import operation_outcome
from services.fhir.responses import FhirResponse, etag, http_date
from services.fhir.store import StoredResource


def fhir_base(request: Request, configured: str | None) -> str:
    """The public FHIR base URL: configured, or derived from the request (behind a proxy, configure it)."""
    if configured:
        return configured.rstrip("/")
    return f"{request.url.scheme}://{request.url.netloc}/fhir"


def resource_headers(stored: StoredResource) -> dict[str, str]:
    return {"ETag": etag(stored.version_id), "Last-Modified": http_date(stored.last_updated)}


def read_response(request: Request, stored: StoredResource) -> Response:
    """200 with the stored bytes, or 304 when the client's copy is this version (`conditional.not_modified`)."""
    headers = resource_headers(stored)
    if not_modified(request.headers.get("if-none-match"), request.headers.get("if-modified-since"),
                    headers["ETag"], stored.last_updated):
        return Response(status_code=304, headers=headers)
    return FhirResponse(stored.content, headers=headers)


def write_response(request: Request, stored: StoredResource, *, base: str, created: bool) -> Response:
    """201/200 after a write, honouring `Prefer: return=minimal | representation | OperationOutcome`."""
    headers = resource_headers(stored)
    headers["Location"] = f"{base}/{stored.resource_type}/{stored.id}/_history/{stored.version_id}"
    status = 201 if created else 200
    prefer = request.headers.get("prefer", "")
    if "return=minimal" in prefer:
        return Response(status_code=status, headers=headers)
    if "return=OperationOutcome" in prefer:
        outcome = operation_outcome([])
        return FhirResponse(outcome, status_code=status, headers=headers)
    return FhirResponse(stored.content, status_code=status, headers=headers)


def content_etag(body: bytes) -> str:
    """The weak ETag of a response that is not one resource version: a digest of its bytes."""
    return f'W/"{hashlib.blake2b(body, digest_size=12).hexdigest()}"'


def content_etag_response(request: Request, body: bytes) -> Response:
    """A response whose weak ETag is a digest of its bytes (search results): 304 when the client has them.

    This is what lets the care-plan service revalidate its cached protocols cheaply."""
    tag = content_etag(body)
    if none_match(request.headers.get("if-none-match"), tag):
        return Response(status_code=304, headers={"ETag": tag})
    return FhirResponse(body, headers={"ETag": tag})
