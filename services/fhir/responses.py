"""FHIR JSON responses: the media type, ETag and Last-Modified conventions of R4 http.html."""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime
from typing import Any

from starlette.responses import Response

from services.fhir import FHIR_JSON_UTF8
from services.fhir.jsonio import dumps
from services.fhir.outcome import FhirError


class FhirResponse(Response):
    """A response whose body is FHIR JSON (bytes, a dict or an R4B model)."""

    media_type = FHIR_JSON_UTF8

    def render(self, content: Any) -> bytes:
        if content is None:
            return b""
        if isinstance(content, bytes):
            return content
        return dumps(content)


def etag(version_id: str | int) -> str:
    return f'W/"{version_id}"'


def http_date(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


def error_response(error: FhirError) -> FhirResponse:
    return FhirResponse(error.operation_outcome(), status_code=error.status, headers=error.headers)
