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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, TypeVar

import httpx

from services.fhir import FHIR_JSON
from services.fhir.bytecache import ByteCache, digest
from services.fhir.outcome import BadRequest, FhirError, NotFound, ServiceUnavailable

log = logging.getLogger("cicatrix.careplan.catalog")

T = TypeVar("T")


class CatalogUnavailable(ServiceUnavailable):
    """The catalog cannot be reached and nothing usable is cached."""


@dataclass
class _Cached:
    body: Any
    etag: str | None
    checked: float
    size: int
    """What the parsed body weighs, about twice its JSON."""
    derived: dict[str, Any] = field(default_factory=dict)
    """What callers computed from this body (`CatalogClient.derived`), by name: kept as long as the body is."""


class CatalogClient:
    def __init__(self, base_url: str, *, fresh_seconds: float = 30.0, timeout: float = 5.0,
                 max_bytes: int = 64 * 1024 * 1024, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.fresh_seconds = fresh_seconds
        self._timeout = timeout
        self._transport = transport
        self._http = self._new_client()
        self.cache: ByteCache[_Cached] = ByteCache("catalog", max_bytes)
        self._fetching: dict[bytes, asyncio.Future[_Cached]] = {}
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
        return (await self._entry(path, params)).body

    async def derived(self, path: str, params: Sequence[tuple[str, str]], name: str, derive: Callable[[Any], T]) -> T:
        """`derive(the JSON at path?params)`, computed once per answer the catalog gives (a revalidated answer
        keeps it): what every plan reads from the same knowledge (a value set's codes, say) is not rebuilt for
        each. `name` tells the derivations of one answer apart; `derive` must not change the JSON."""
        entry = await self._entry(path, params)
        if name not in entry.derived:
            entry.derived[name] = derive(entry.body)
        value: T = entry.derived[name]
        return value

    async def _entry(self, path: str, params: Sequence[tuple[str, str]]) -> _Cached:
        key = digest(path, *chain.from_iterable(params))  # its parts length-prefixed: no encoding needed
        cached = self.cache.get(key)
        if cached and time.monotonic() - cached.checked < self.fresh_seconds:
            return cached
        fetching = self._fetching.get(key)
        if fetching is None:
            fetching = asyncio.ensure_future(self._fetch(key, path, params, cached))
            self._fetching[key] = fetching
            fetching.add_done_callback(lambda _: self._fetching.pop(key, None))
        return await asyncio.shield(fetching)

    async def _fetch(self, key: bytes, path: str, params: Sequence[tuple[str, str]],
                     cached: _Cached | None) -> _Cached:
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
            return cached
        if response.status_code >= 500:
            return self._fallback(path, cached, f"HTTP {response.status_code}")
        if response.status_code == 404:
            raise NotFound(f"The catalog has no {path}")
        if response.status_code >= 400:
            raise FhirError(f"The catalog refused {path}: HTTP {response.status_code}", status=502,
                            code="exception")
        entry = _Cached(response.json(), response.headers.get("etag"), time.monotonic(), 2 * len(response.content))
        self.cache.put(key, entry, entry.size)
        return entry

    def _fallback(self, path: str, cached: _Cached | None, reason: str) -> _Cached:
        if cached is not None:
            log.warning("catalog unavailable, serving the last good copy", extra={"path": path, "reason": reason})
            return cached
        raise CatalogUnavailable(f"The catalog at {self.base_url} is unavailable ({reason}) and no copy of the "
                                 "treatment knowledge is cached; try again shortly")
