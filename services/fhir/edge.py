"""The ASGI edge every request crosses before routing.

A plain ASGI middleware (not Starlette's BaseHTTPMiddleware, which costs a task
and a memory stream per request) that:

- gives each request an id (a sane incoming `X-Request-Id` is kept) for logs and replies;
- answers 406 for FHIR requests whose Accept/_format asks for something other than JSON;
- answers 413 before parsing when Content-Length is over the limit, and stops a
  streamed body as soon as it passes the limit;
- parses the FHIR URL once (`routes.fhir_request`: what access control, the audit trail and the read
  route read), answering 400 when it has something other than a FHIR id where an id goes;
- turns any exception that escaped the handlers into a generic 500 OperationOutcome,
  logging the traceback server-side only;
- records Prometheus metrics by route template and one access-log line without PHI (the route
  template and the parsed interaction);
- adds `X-Content-Type-Options: nosniff` to every response.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.fhir.media import check_acceptable
from services.fhir.observability import AccessLog, HttpMetrics, request_id_var
from services.fhir.outcome import BadRequest, FhirError, InternalError, PayloadTooLarge
from services.fhir.responses import error_response
from services.fhir.routes import REQUEST_SCOPE_KEY, InvalidId, parse_cached

log = logging.getLogger("cicatrix.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class FhirEdgeMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: HttpMetrics, max_body_bytes: int, fhir_prefix: str = "/fhir"):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.fhir_prefix = fhir_prefix
        self.access_log = AccessLog()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = _headers(scope)
        incoming = headers.get("x-request-id", "")
        request_id = incoming if _REQUEST_ID.match(incoming) else os.urandom(16).hex()  # uuid4's bits, cheaper
        token = request_id_var.set(request_id)
        status_holder = [500]
        response_started = [False]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_started[0] = True
                status_holder[0] = message["status"]
                extra = [(b"x-request-id", request_id.encode()), (b"x-content-type-options", b"nosniff")]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        try:
            early = self._early_rejection(scope, headers)
            if early is not None:
                await error_response(early)(scope, receive, send_wrapper)
            else:
                await self.app(scope, self._limited(receive), send_wrapper)
        except Exception as exc:  # noqa: BLE001 - the edge is where unexpected failures become a 500
            if isinstance(exc, FhirError):
                error = exc
            else:
                log.exception("unhandled error", extra={"path": scope.get("path"), "method": scope.get("method")})
                error = InternalError("The server failed to process the request; the error has been logged "
                                      f"under request id {request_id}")
            if not response_started[0]:
                await error_response(error)(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(scope["method"], template, status_holder[0], elapsed)
            parsed = scope.get(REQUEST_SCOPE_KEY)
            self.access_log.request(scope["method"], template, status_holder[0], elapsed, request_id,
                                    parsed.interaction if parsed is not None else None)
            request_id_var.reset(token)

    def _early_rejection(self, scope: Scope, headers: dict[str, str]) -> FhirError | None:
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_body_bytes:
            return PayloadTooLarge(f"The request body of {length} bytes exceeds the limit of "
                                   f"{self.max_body_bytes} bytes")
        if scope["path"].startswith(self.fhir_prefix):
            raw_query = scope.get("query_string", b"")
            # Only a query that names `_format`, or may name it percent-encoded, is parsed here: most do neither.
            format_param = parse_qs(raw_query.decode("latin-1")).get("_format", [None])[0] \
                if b"_format" in raw_query or b"%" in raw_query else None
            try:
                check_acceptable(headers.get("accept"), format_param)
                scope[REQUEST_SCOPE_KEY] = parse_cached(scope["method"], scope["path"], prefix=self.fhir_prefix)
            except FhirError as error:
                return error
            except InvalidId as invalid:
                return BadRequest(f"'{invalid.segment[:70]}' is not a valid FHIR id ([A-Za-z0-9-.]{{1,64}})",
                                  expression="id")
        else:
            scope[REQUEST_SCOPE_KEY] = None
        return None

    def _limited(self, receive: Receive) -> Receive:
        """Wrap `receive` so a chunked body over the limit fails as 413 while it streams in."""
        seen = 0
        limit = self.max_body_bytes

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes")
            return message

        return limited_receive


def _headers(scope: Scope) -> dict[str, Any]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
