"""PATCH bodies: JSON Patch (RFC 6902, `application/json-patch+json`), the one PATCH format served.

Applied by the maintained `jsonpatch` library: every operation of the RFC, `move` and `copy`
included, with array indices as RFC 6901 defines them (never negative).
"""

from __future__ import annotations

from typing import Any

import jsonpatch
from jsonpointer import JsonPointerException

from services.fhir.outcome import BadRequest, PreconditionFailed, Unprocessable

JSON_PATCH = "application/json-patch+json"


def apply_json_patch(document: dict[str, Any], operations: Any) -> dict[str, Any]:
    """RFC 6902 on a copy of `document`.

    A malformed patch is 400, a path that does not resolve 422, a failed `test` 412."""
    if not isinstance(operations, list) or not all(
            isinstance(op, dict) and isinstance(op.get("op"), str) and isinstance(op.get("path"), str)
            for op in operations):
        raise BadRequest("A JSON Patch is an array of operations, each with a string 'op' and 'path'",
                         code="structure")
    try:
        patched = jsonpatch.JsonPatch(operations).apply(document)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise PreconditionFailed(f"JSON Patch test failed: {exc}", code="processing") from None
    except jsonpatch.InvalidJsonPatch as exc:
        raise BadRequest(f"Invalid JSON Patch: {exc}", code="structure") from None
    except (jsonpatch.JsonPatchException, JsonPointerException) as exc:
        raise Unprocessable(f"JSON Patch cannot be applied: {exc}", code="processing") from None
    if not isinstance(patched, dict):  # a whole-document replace with something else
        raise Unprocessable(f"The patched document must still be a {document.get('resourceType')}",
                            code="processing")
    return patched
