"""Reading treatment knowledge from the catalog over FHIR REST, with a cache that survives outages.

Every response is cached under a digest of its URL, at most CATALOG_CACHE_BYTES of them.
A cached copy younger than `fresh_seconds` is used as is; an older one is revalidated
with `If-None-Match` (the catalog answers 304 for unchanged reads and searches), once
for all the requests that want it meanwhile. When the catalog is down or failing, the
last good copy keeps plans flowing; only with nothing cached does the caller get a 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx

from services.fhir import FHIR_JSON
from services.fhir.bytecache import ByteCache, digest
from services.fhir.outcome import BadRequest, FhirError, NotFound, ServiceUnavailable

log = logging.getLogger("cicatrix.careplan.catalog")


class CatalogUnavailable(ServiceUnavailable):
    """The catalog cannot be reached and nothing usable is cached."""


@dataclass
class _Cached:
    body: Any
    etag: str | None
    checked: float
    size: int
    """What the parsed body weighs, about twice its JSON."""


class CatalogClient:
    def __init__(self, base_url: str, *, fresh_seconds: float = 30.0, timeout: float = 5.0,
                 max_bytes: int = 64 * 1024 * 1024, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.fresh_seconds = fresh_seconds
        self._timeout = timeout
        self._transport = transport
        self._http = self._new_client()
        self.cache: ByteCache[_Cached] = ByteCache("catalog", max_bytes)
        self._fetching: dict[bytes, asyncio.Future[Any]] = {}
        """The revalidation under way for each key: concurrent requests for one URL share it (and the entry
        goes when it ends, so this holds no more than the requests in flight)."""

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=self._timeout, transport=self._transport,
                                 headers={"Accept": FHIR_JSON})

    async def close(self) -> None:
        """Close the connections; the cache stays, and the next request opens new connections."""
        await self._http.aclose()

    async def get(self, path: str, params: Sequence[tuple[str, str]] = ()) -> Any:
        """The JSON at `path?params`, from cache when fresh, revalidated when stale, stale when the catalog fails."""
        key = digest(path, urlencode(list(params)))
        cached = self.cache.get(key)
        if cached and time.monotonic() - cached.checked < self.fresh_seconds:
            return cached.body
        fetching = self._fetching.get(key)
        if fetching is None:
            fetching = asyncio.ensure_future(self._fetch(key, path, params, cached))
            self._fetching[key] = fetching
            fetching.add_done_callback(lambda _: self._fetching.pop(key, None))
        return await asyncio.shield(fetching)

    async def _fetch(self, key: bytes, path: str, params: Sequence[tuple[str, str]], cached: _Cached | None) -> Any:
        headers = {"If-None-Match": cached.etag} if cached and cached.etag else {}
        if self._http.is_closed:
            self._http = self._new_client()
        try:
            response = await self._http.get(path, params=list(params), headers=headers)
        except httpx.InvalidURL:
            raise BadRequest(f"The catalog cannot be asked for {path} with these parameters (the URL would be "
                             "invalid)", code="too-long") from None
        except httpx.HTTPError as exc:
            return self._fallback(path, cached, f"{type(exc).__name__}")
        if response.status_code == 304 and cached:
            cached.checked = time.monotonic()
            self.cache.put(key, cached, cached.size)
            return cached.body
        if response.status_code >= 500:
            return self._fallback(path, cached, f"HTTP {response.status_code}")
        if response.status_code == 404:
            raise NotFound(f"The catalog has no {path}")
        if response.status_code >= 400:
            raise FhirError(f"The catalog refused {path}: HTTP {response.status_code}", status=502,
                            code="exception")
        body = response.json()
        self.cache.put(key, _Cached(body, response.headers.get("etag"), time.monotonic(), 2 * len(response.content)),
                       2 * len(response.content))
        return body

    def _fallback(self, path: str, cached: _Cached | None, reason: str) -> Any:
        if cached is not None:
            log.warning("catalog unavailable, serving the last good copy", extra={"path": path, "reason": reason})
            return cached.body
        raise CatalogUnavailable(f"The catalog at {self.base_url} is unavailable ({reason}) and no copy of the "
                                 "treatment knowledge is cached; try again shortly")
