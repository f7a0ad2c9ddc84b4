"""Reading treatment knowledge from the catalog over FHIR REST, with a cache that survives outages.

Every response is cached by URL. A cached copy younger than `fresh_seconds` is used
as is; an older one is revalidated with `If-None-Match` (the catalog answers 304 for
unchanged reads and searches). When the catalog is down or failing, the last good
copy keeps plans flowing; only with nothing cached does the caller get a 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx

from services.fhir import FHIR_JSON
from services.fhir.outcome import FhirError, NotFound, ServiceUnavailable

log = logging.getLogger("cicatrix.careplan.catalog")


class CatalogUnavailable(ServiceUnavailable):
    """The catalog cannot be reached and nothing usable is cached."""


@dataclass
class _Cached:
    body: Any
    etag: str | None
    checked: float


class CatalogClient:
    def __init__(self, base_url: str, *, fresh_seconds: float = 30.0, timeout: float = 5.0,
                 max_entries: int = 512, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.fresh_seconds = fresh_seconds
        self.max_entries = max_entries
        self._timeout = timeout
        self._transport = transport
        self._http = self._new_client()
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=self._timeout, transport=self._transport,
                                 headers={"Accept": FHIR_JSON})

    async def close(self) -> None:
        """Close the connections; the cache stays, and the next request opens new connections."""
        await self._http.aclose()

    async def get(self, path: str, params: Sequence[tuple[str, str]] = ()) -> Any:
        """The JSON at `path?params`, from cache when fresh, revalidated when stale, stale when the catalog fails."""
        key = path + ("?" + urlencode(list(params)) if params else "")
        cached = self._cache.get(key)
        if cached and time.monotonic() - cached.checked < self.fresh_seconds:
            return cached.body
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # one revalidation per URL at a time
            cached = self._cache.get(key)
            if cached and time.monotonic() - cached.checked < self.fresh_seconds:
                return cached.body
            return await self._fetch(key, path, params, cached)

    async def _fetch(self, key: str, path: str, params: Sequence[tuple[str, str]], cached: _Cached | None) -> Any:
        headers = {"If-None-Match": cached.etag} if cached and cached.etag else {}
        if self._http.is_closed:
            self._http = self._new_client()
        try:
            response = await self._http.get(path, params=list(params), headers=headers)
        except httpx.HTTPError as exc:
            return self._fallback(key, cached, f"{type(exc).__name__}")
        if response.status_code == 304 and cached:
            cached.checked = time.monotonic()
            self._cache.move_to_end(key)
            return cached.body
        if response.status_code >= 500:
            return self._fallback(key, cached, f"HTTP {response.status_code}")
        if response.status_code == 404:
            raise NotFound(f"The catalog has no {path}")
        if response.status_code >= 400:
            raise FhirError(f"The catalog refused {path}: HTTP {response.status_code}", status=502,
                            code="exception")
        body = response.json()
        self._cache[key] = _Cached(body, response.headers.get("etag"), time.monotonic())
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return body

    def _fallback(self, key: str, cached: _Cached | None, reason: str) -> Any:
        if cached is not None:
            log.warning("catalog unavailable, serving the last good copy", extra={"path": key, "reason": reason})
            return cached.body
        raise CatalogUnavailable(f"The catalog at {self.base_url} is unavailable ({reason}) and no copy of the "
                                 "treatment knowledge is cached; try again shortly")
