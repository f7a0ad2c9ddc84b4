"""The EHR's FHIR REST API as the dispatcher needs it, over one httpx.AsyncClient.

Every exchange goes through `raw`, the one place where httpx's exceptions become
`EhrTransportError` (see errors.py); `request` adds credentials, refreshes them once
on a 401, and turns any status >= 400 into `EhrRejected` with the EHR's
OperationOutcome and Retry-After. Nothing above this module sees httpx errors.

TLS is always verified (system CAs, or CAREPLAN_EHR_CA_BUNDLE). Requests carry an
`X-Request-Id` (the delivery id and attempt) so the EHR's logs and ours meet; no
request or response body is ever logged.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from services.careplan.delivery.auth import Auth, NoAuth, make_auth
from services.careplan.delivery.errors import EhrRejected, EhrTransportError
from services.careplan.delivery.retry import parse_retry_after

log = logging.getLogger("cicatrix.careplan.delivery.ehr")
# httpx logs every URL at INFO; ours carry only ids, but one line per request drowns the delivery log.
logging.getLogger("httpx").setLevel(logging.WARNING)

FHIR_JSON = "application/fhir+json"
RETURN_REPRESENTATION = {"Prefer": "return=representation"}
"""On every write: the answer then carries the stored resource, which the read-back compares without a GET."""

# Transport errors raised before any byte of the request can have reached the EHR: never ambiguous.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol,
             httpx.LocalProtocolError)


@dataclass
class EhrResponse:
    status: int
    body: dict[str, Any] | None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def location(self) -> str | None:
        return self.headers.get("location") or self.headers.get("content-location")

    @property
    def etag_version(self) -> str | None:
        return version_from_etag(self.headers.get("etag"))


def version_from_etag(etag: str | None) -> str | None:
    """'W/"3"' -> '3'."""
    if not etag:
        return None
    value = etag.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"') or None


def parse_location(location: str) -> tuple[str, str, str | None]:
    """'[base/]Type/id[/_history/vid]' -> (Type, id, vid)."""
    path = urlsplit(location).path if "://" in location else location.split("?", 1)[0]
    parts = [p for p in path.split("/") if p]
    if "_history" in parts:
        index = parts.index("_history")
        return parts[index - 2], parts[index - 1], parts[index + 1] if index + 1 < len(parts) else None
    return parts[-2], parts[-1], None


def ssl_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """Certificate and host name checks always on; a hospital's private CA comes in as a bundle."""
    return ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)


class EhrClient:
    def __init__(self, base_url: str, *, auth: Auth | None = None, connect_timeout: float = 5.0,
                 timeout: float = 30.0, ca_bundle: Path | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = auth or NoAuth()
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            verify=ssl_context(ca_bundle), transport=transport,
            # Idle connections are dropped after 2 s, before servers close them (Node: 5 s, nginx: 75 s):
            # reusing a connection the server is closing fails the request for no reason.
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16, keepalive_expiry=2.0),
            headers={"Accept": FHIR_JSON, "User-Agent": "cicatrix-careplan-dispatcher"})

    @classmethod
    def from_settings(cls, settings: Any) -> EhrClient:
        """The client CAREPLAN_EHR_* configure (base URL, auth, timeouts, CA bundle)."""
        return cls(settings.EHR_BASE_URL, auth=make_auth(settings),
                   connect_timeout=settings.EHR_CONNECT_TIMEOUT_SECONDS, timeout=settings.EHR_TIMEOUT_SECONDS,
                   ca_bundle=settings.EHR_CA_BUNDLE)

    async def close(self) -> None:
        await self._http.aclose()

    # --------------------------------------------------------------- boundary

    async def raw(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                  data: dict[str, str] | None = None, content: bytes | None = None,
                  params: dict[str, str] | None = None) -> httpx.Response:
        """One HTTP exchange; the only place httpx exceptions are caught and translated."""
        name = f"{method} {urlsplit(url).path}"
        try:
            return await self._http.request(method, url, headers=headers, data=data, content=content,
                                            params=params)
        except _NOT_SENT as exc:
            raise EhrTransportError(f"{type(exc).__name__}: the EHR could not be reached", request=name,
                                    maybe_applied=False) from exc
        except httpx.TimeoutException as exc:
            raise EhrTransportError(f"{type(exc).__name__}: no answer in time", request=name) from exc
        except httpx.HTTPError as exc:
            raise EhrTransportError(f"{type(exc).__name__}: the connection failed before an answer",
                                    request=name) from exc

    # ---------------------------------------------------------------- requests

    async def request(self, method: str, path: str, *, body: dict[str, Any] | None = None,
                      headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
                      request_id: str | None = None) -> EhrResponse:
        """A FHIR interaction relative to the base; status >= 400 raises EhrRejected."""
        url = path if "://" in path else f"{self.base_url}/{path.lstrip('/')}" if path else self.base_url
        extra = dict(headers or {})
        if body is not None:
            extra["Content-Type"] = FHIR_JSON
        if request_id:
            extra["X-Request-Id"] = request_id
        content = orjson.dumps(body) if body is not None else None
        for first_try in (True, False):
            auth_headers = await self.auth.headers(self)
            response = await self.raw(method, url, headers={**extra, **auth_headers}, content=content, params=params)
            if response.status_code == 401 and first_try and self.auth.refreshable:
                log.info("EHR refused the access token; fetching a new one", extra={"request": method})
                self.auth.invalidate()
                continue
            break
        return self._answer(method, path, response)

    @staticmethod
    def _answer(method: str, path: str, response: httpx.Response) -> EhrResponse:
        body: dict[str, Any] | None = None
        if response.content:
            try:
                parsed = orjson.loads(response.content)
                body = parsed if isinstance(parsed, dict) else None
            except orjson.JSONDecodeError:
                body = None
        headers = {k.lower(): v for k, v in response.headers.items()}
        if response.status_code >= 400:
            outcome = body if body and body.get("resourceType") == "OperationOutcome" else None
            raise EhrRejected(response.status_code, outcome, request=f"{method} {path.split('?')[0] or '/'}",
                              retry_after=parse_retry_after(headers.get("retry-after")))
        return EhrResponse(response.status_code, body, headers)

    # ----------------------------------------------------------- interactions

    async def capabilities(self) -> dict[str, Any]:
        response = await self.request("GET", "metadata")
        if not response.body or response.body.get("resourceType") != "CapabilityStatement":
            raise EhrRejected(502, None, request="GET metadata", message="metadata is not a CapabilityStatement")
        return response.body

    async def transaction(self, bundle: dict[str, Any], *, request_id: str | None = None) -> dict[str, Any]:
        response = await self.request("POST", "", body=bundle, headers=RETURN_REPRESENTATION, request_id=request_id)
        if not response.body or response.body.get("type") != "transaction-response":
            raise EhrRejected(502, None, request="POST /", message="the EHR's answer is not a transaction-response")
        return response.body

    async def create(self, resource: dict[str, Any], *, if_none_exist: str | None,
                     request_id: str | None = None) -> EhrResponse:
        headers = {"If-None-Exist": if_none_exist} if if_none_exist else {}
        headers |= RETURN_REPRESENTATION
        return await self.request("POST", resource["resourceType"], body=resource, headers=headers,
                                  request_id=request_id)

    async def update(self, resource: dict[str, Any], *, if_match: str | None,
                     request_id: str | None = None) -> EhrResponse:
        headers = {"If-Match": f'W/"{if_match}"'} if if_match else {}
        headers |= RETURN_REPRESENTATION
        return await self.request("PUT", f"{resource['resourceType']}/{resource['id']}", body=resource,
                                  headers=headers, request_id=request_id)

    async def read(self, resource_type: str, resource_id: str, *, request_id: str | None = None) -> EhrResponse:
        return await self.request("GET", f"{resource_type}/{resource_id}", request_id=request_id)

    async def search(self, resource_type: str, params: dict[str, str], *, request_id: str | None = None,
                     max_pages: int = 1) -> list[dict[str, Any]]:
        """Matching resources, following `next` links for up to `max_pages` pages.

        Searches by identifier or tag match one or none (one page); a search by patient, matched on our
        identifier here, may need more. More pages than `max_pages` raises: an incomplete answer could
        hide the copy that search-before-resend is looking for."""
        found: list[dict[str, Any]] = []
        path: str = resource_type
        query: dict[str, str] | None = params
        for _ in range(max_pages):
            response = await self.request("GET", path, params=query, request_id=request_id)
            body = response.body or {}
            found += [e["resource"] for e in body.get("entry", [])
                      if isinstance(e, dict) and isinstance(e.get("resource"), dict)
                      and e["resource"].get("resourceType") == resource_type
                      and (e.get("search") or {}).get("mode", "match") == "match"]
            following = next((link.get("url") for link in body.get("link", [])
                              if isinstance(link, dict) and link.get("relation") == "next"), None)
            if not isinstance(following, str):
                return found
            path, query = following, None
        raise EhrRejected(502, None, request=f"GET {resource_type}",
                          message=f"the search had more than {max_pages} pages (CAREPLAN_EHR_SEARCH_MAX_PAGES)")
