"""One place that turns every failure into an OperationOutcome.

FastAPI's defaults answer `{"detail": ...}`; a FHIR client expects an
OperationOutcome with `diagnostics` and an `expression` pointing at the culprit.
Unexpected exceptions are logged with their traceback and answered with a generic
500 outcome: the traceback never reaches the client.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from services.fhir.outcome import FhirError, Issue
from services.fhir.responses import FhirResponse, error_response

log = logging.getLogger("cicatrix.errors")

# pydantic error types -> FHIR issue-type codes
_ISSUE_CODES = {
    "missing": "required",
    "json_invalid": "structure",
    "json_type": "structure",
    "extra_forbidden": "structure",
    "string_too_long": "too-long",
    "too_long": "too-long",
}

_HTTP_ISSUE_CODES = {401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
                     406: "not-supported", 409: "conflict", 410: "deleted", 412: "conflict", 413: "too-costly",
                     415: "not-supported", 429: "throttled", 503: "transient"}


def _expression(location: Sequence[Any]) -> str:
    """pydantic's loc tuple as a FHIRPath-like expression: ('query', '_count') -> '_count'."""
    parts = [str(p) for p in location if p not in ("body", "query", "path", "header")]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text or "body"


def validation_issues(errors: Sequence[dict[str, Any]], *, prefix: str = "") -> list[Issue]:
    """pydantic errors as OperationOutcome issues, one per error."""
    issues = []
    for error in errors:
        where = _expression(error.get("loc", ()))
        if prefix:
            where = f"{prefix}.{where}" if where != "body" else prefix
        issues.append(Issue(code=_ISSUE_CODES.get(error.get("type", ""), "invalid"),
                            diagnostics=f"{where}: {error.get('msg', 'invalid value')}", expression=(where,)))
    return issues


async def _fhir_error(_: Request, exc: Exception) -> FhirResponse:
    assert isinstance(exc, FhirError)
    return error_response(exc)


async def _validation_error(_: Request, exc: Exception) -> FhirResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    status = 400
    return error_response(FhirError("Invalid request", issues=validation_issues(errors), status=status))


async def _http_error(request: Request, exc: Exception) -> FhirResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        message = f"No FHIR interaction at {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    error = FhirError(message, code=_HTTP_ISSUE_CODES.get(exc.status_code, "processing"),
                      status=exc.status_code, headers=dict(exc.headers or {}))
    return error_response(error)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(FhirError, _fhir_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
