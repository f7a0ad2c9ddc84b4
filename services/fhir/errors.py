"""One place that turns every failure into an OperationOutcome.

FastAPI's defaults answer `{"detail": ...}`; a FHIR client expects an
OperationOutcome with `diagnostics` and an `expression` pointing at the culprit.
Unexpected exceptions are logged with their traceback and answered with a generic
500 outcome: the traceback never reaches the client.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from services.fhir.outcome import FhirError, validation_issues
from services.fhir.responses import FhirResponse, error_response

log = logging.getLogger("cicatrix.errors")

_HTTP_ISSUE_CODES = {401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
                     406: "not-supported", 409: "conflict", 410: "deleted", 412: "conflict", 413: "too-costly",
                     415: "not-supported", 429: "throttled", 503: "transient"}


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
