"""Reading and writing FHIR JSON.

Bodies are parsed here, once, with the limits a hospital-facing service needs:
a media-type check (415), strict JSON (400 with the position of the error) and a
nesting-depth cap, so hostile input fails fast with an OperationOutcome instead of
exhausting the parser. Output is serialised with orjson; R4B models are dumped with
aliases and without nulls, which is what R4 requires (FHIR-REFERENCE §3).
"""

from __future__ import annotations

from typing import Any

import orjson
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from starlette.requests import Request

from services.fhir.outcome import BadRequest, PayloadTooLarge, UnsupportedMediaType

ACCEPTED_BODY_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
FORM_BODY_TYPE = "application/x-www-form-urlencoded"
MAX_JSON_DEPTH = 64
PARSE_INLINE_BYTES = 64 * 1024
"""Bodies up to this size are parsed on the event loop (well under a millisecond); larger ones, up to
MAX_BODY_BYTES, take tens of milliseconds with the depth check and are parsed in the service's work pool."""


def dumps(resource: Any) -> bytes:
    """Serialise a dict or an R4B model to compact R4 JSON bytes."""
    if isinstance(resource, FHIRAbstractModel):
        return resource.model_dump_json(exclude_comments=True).encode()
    return orjson.dumps(resource)


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values() if isinstance(child, dict | list))
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node if isinstance(child, dict | list))
    return False


def loads(body: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON bytes; malformed or too deeply nested input is a 400 OperationOutcome."""
    if not body.strip():
        raise BadRequest("The request body is empty; a FHIR JSON resource was expected", code="structure")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}", code="structure") from None
    if _depth_exceeds(value, max_depth):
        raise BadRequest(f"The JSON body nests deeper than {max_depth} levels", code="too-costly")
    return value


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_json(request: Request, *, max_bytes: int | None = None) -> Any:
    """The request body as parsed JSON, after the media-type and size checks."""
    kind = media_type(request)
    if kind not in ACCEPTED_BODY_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type '{kind or 'none'}' is not supported; send application/fhir+json",
        )
    body = await request.body()
    if max_bytes is not None and len(body) > max_bytes:
        raise PayloadTooLarge(f"The request body exceeds {max_bytes} bytes")
    if len(body) > PARSE_INLINE_BYTES:
        return await request.app.state.ctx.work.run(loads, body)
    return loads(body)


async def read_resource(request: Request, *, expected_type: str | None = None) -> dict[str, Any]:
    """The request body as a FHIR resource dict, optionally of one resource type."""
    value = await read_json(request)
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        raise BadRequest("The request body must be a FHIR resource with a resourceType", code="structure",
                         expression="resourceType")
    if expected_type and value["resourceType"] != expected_type:
        raise BadRequest(
            f"Expected a {expected_type} resource but the body is a {value['resourceType']}",
            expression="resourceType",
        )
    return value
