"""The read interaction (`GET` and `HEAD [base]/[type]/[id]`), served ahead of FastAPI's routing.

Reads by id are what integration engines do most, and FastAPI's per-request work (dependency
solving, parameter validation, a worker-thread hop for a sync endpoint) costs more than reading
the stored bytes does. `ReadRoute` is the read handler of the types `ResourceInteractions` serves:
a plain Starlette route that the interaction table (services.fhir.interaction_table) puts first in the
app's route list, from the read entry of those types (`FastReads`).

- it claims the requests the edge parsed as a read (`routes.fhir_request`) of a served type;
  anything else (an unknown type, `$operations`, `_search`, other methods) falls through to the
  FastAPI routes unchanged, so their answers stay what they were;
- it sits inside every middleware (the edge's request id, 406, metrics and access log, access
  control and the audit trail), and runs the interactions' `read_hook` (compartment checks) on
  what it serves, before any 304; 404/410 and other errors are the same `FhirError`s, rendered by
  the same OperationOutcome handlers;
- it answers with the stored bytes, ETag and Last-Modified, and 304 by `conditional.not_modified`;
  a HEAD gets the same status and headers without the body.

With a `ReadCache` the current version of a resource is kept in memory (the catalog's knowledge
changes rarely and is read constantly): a write in this process drops the entry when it is made
and again when its transaction ends, so this process never serves what it has overwritten; a write
made by another process sharing the database is seen once the entry is older than the cache's
`fresh_seconds`. Without a cache every read goes to the store: on PostgreSQL as one statement on the
event loop (`services.fhir.loopdb`), elsewhere in a worker thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import event
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import URLPath
from starlette.requests import Request
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

from services.fhir import FHIR_JSON_UTF8
from services.fhir.bytecache import CacheMetrics, digest
from services.fhir.conditional import none_match, not_modified
from services.fhir.deps import ServiceContext
from services.fhir.loopdb import LoopDatabase, on_loop
from services.fhir.responses import etag, http_date
from services.fhir.rest import content_etag, fhir_base
from services.fhir.routes import InvalidId, fhir_request
from services.fhir.store import ResourceStore, StoredResource
from services.fhir.workpool import WorkPool

_CHANGED = "cicatrix.read_cache.changed"

ReadHook = Callable[[Request, StoredResource], None]
"""Runs on every resource a read serves, before any 304 (the compartment checks)."""
SearchBundle = Callable[[str, list[tuple[str, str]], Request, Session, str], bytes]
"""(type, query pairs, request, session, base) -> the searchset Bundle's bytes."""


class ReadCache:
    """Answers by key, fresh for `fresh_seconds`, at most `max_bytes` of them (least recently stored go first).

    Keys are `("read", type, id)` for current versions and `("search", type, digest of query and base)` for
    searchset Bundles. A write of one resource drops its read entry and every search (a search may list or
    include it)."""

    name = "reads"

    def __init__(self, fresh_seconds: float, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.fresh_seconds = fresh_seconds
        self.max_bytes = max_bytes
        self.size = 0
        self.generation = 0
        self._entries: OrderedDict[tuple[str, ...], tuple[float, Any, int]] = OrderedDict()
        self._searches: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, ...], asyncio.Future[Any]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def fetch(self, key: tuple[str, ...], load: Callable[[], Any],
                    run: Callable[[Callable[[], Any]], Awaitable[Any]] = run_in_threadpool) -> Any:
        """The entry, or what `load` (run in a worker thread by `run`; it `put`s what it read) returns.

        Concurrent misses of one key share one load. An entry in the last quarter of its freshness is
        still served, while one load refreshes it in the background, so a popular entry never expires
        under its readers."""
        entry = self._entries.get(key)
        if entry is not None:
            age = time.monotonic() - entry[0]
            if age < self.fresh_seconds:
                if age >= 0.75 * self.fresh_seconds and key not in self._loading:
                    self._load(key, load, run)
                return entry[1]
        return await asyncio.shield(self._load(key, load, run))

    def _load(self, key: tuple[str, ...], load: Callable[[], Any],
              run: Callable[[Callable[[], Any]], Awaitable[Any]]) -> asyncio.Future[Any]:
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.ensure_future(run(load))
            self._loading[key] = loading
            loading.add_done_callback(lambda done: self._loaded(key, done))
        return loading

    def _loaded(self, key: tuple[str, ...], done: asyncio.Future[Any]) -> None:
        self._loading.pop(key, None)
        if not done.cancelled():
            done.exception()  # a refresh nobody awaited (a 404 after a delete, say) is not an unhandled error

    def put(self, key: tuple[str, ...], value: Any, size: int, generation: int) -> None:
        """Keep what was read, unless a write in this process happened since the read began."""
        with self._lock:
            if generation != self.generation or size > self.max_bytes // 4:
                return
            self._pop(key)
            self._entries[key] = (time.monotonic(), value, size)
            self.size += size
            if key[0] == "search":
                self._searches.add(key)
            while self.size > self.max_bytes and self._entries:
                self._pop(next(iter(self._entries)))

    def discard(self, resource_type: str, resource_id: str) -> None:
        with self._lock:
            self.generation += 1
            self._pop(("read", resource_type, resource_id))
            for key in list(self._searches):
                self._pop(key)

    def _pop(self, key: tuple[str, ...]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.size -= entry[2]
        self._searches.discard(key)

    def changed(self, session: OrmSession, resource_type: str, resource_id: str) -> None:
        """A write of (type, id) in `session`: drop what it affects now and again when the transaction ends."""
        self.discard(resource_type, resource_id)
        session.info.setdefault(_CHANGED, []).append((self, resource_type, resource_id))


@event.listens_for(OrmSession, "after_commit")
@event.listens_for(OrmSession, "after_rollback")
def _transaction_ended(session: OrmSession) -> None:
    for cache, resource_type, resource_id in session.info.pop(_CHANGED, ()):
        cache.discard(resource_type, resource_id)


def _headers(stored: StoredResource) -> list[tuple[bytes, bytes]]:
    assert stored.content is not None
    return [(b"content-type", FHIR_JSON_UTF8.encode()), (b"content-length", str(len(stored.content)).encode()),
            (b"etag", etag(stored.version_id).encode()), (b"last-modified", http_date(stored.last_updated).encode())]


class ReadRoute(BaseRoute):
    """`GET|HEAD /fhir/{resource_type}/{resource_id}` for `types` (see the module doc)."""

    path = path_format = "/fhir/{resource_type}/{resource_id}"
    name = "read"

    def __init__(self, store: ResourceStore, types: frozenset[str], read_hook: ReadHook | None,
                 sessions: Callable[[], Session], cache: ReadCache | None = None, prefix: str = "/fhir",
                 loop_db: LoopDatabase | None = None) -> None:
        self.store = store
        self.types = types
        self.read_hook = read_hook
        self.sessions = sessions
        self.cache = cache
        self.prefix = prefix
        self.loop_db = loop_db

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            return Match.NONE, {}
        try:
            request = fhir_request(scope, prefix=self.prefix)
        except InvalidId:
            return Match.NONE, {}
        if request is None or request.interaction != "read" or request.resource_type not in self.types:
            return Match.NONE, {}
        if len(scope["path"]) != len(self.prefix) + len(request.resource_type) + len(request.resource_id or "") + 2:
            return Match.NONE, {}  # empty segments (`/fhir//T/id`, `T/id/`): FastAPI's answers (404, redirect)
        return Match.FULL, {"route": self, "endpoint": self.handle,
                            "path_params": {"resource_type": request.resource_type,
                                            "resource_id": request.resource_id}}

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = scope["path_params"]
        key = (params["resource_type"], params["resource_id"])
        found: tuple[StoredResource, list[tuple[bytes, bytes]]]
        if self.cache is None and on_loop(self.loop_db):
            stored = await self.store.read_on_loop(self.loop_db, *key)
            found = stored, _headers(stored)
        elif self.cache is None:
            found = await run_in_threadpool(self._load, key)
        else:
            found = await self.cache.fetch(("read", *key), lambda: self._load(key))
        stored, headers = found
        hook = self.read_hook
        if hook is not None:
            hook(Request(scope, receive), stored)
        if_none_match = if_modified_since = None
        for name, value in scope["headers"]:
            if name == b"if-none-match" and if_none_match is None:
                if_none_match = value.decode("latin-1")
            elif name == b"if-modified-since" and if_modified_since is None:
                if_modified_since = value.decode("latin-1")
        if (if_none_match or if_modified_since) and not_modified(if_none_match, if_modified_since,
                                                                 headers[2][1].decode(), stored.last_updated):
            await send({"type": "http.response.start", "status": 304, "headers": headers[2:]})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else stored.content})

    def _load(self, key: tuple[str, str]) -> tuple[StoredResource, list[tuple[bytes, bytes]]]:
        generation = self.cache.generation if self.cache is not None else 0
        with self.sessions() as session:
            stored = self.store.read(session, *key)  # 404 / 410 / 400 as FhirErrors
        headers = _headers(stored)
        if self.cache is not None:
            self.cache.put(("read", *key), (stored, headers), len(stored.content or b""), generation)
        return stored, headers


class SearchRoute(BaseRoute):
    """`GET /fhir/{resource_type}` answered from the cache when the same search was answered moments ago.

    Installed only with a cache, and only where searches do not depend on who asks (no `search_hook`);
    a request with a `Prefer` header (handling=strict) is always searched afresh."""

    path = path_format = "/fhir/{resource_type}"
    name = "search-type"

    def __init__(self, types: frozenset[str], search: SearchBundle, sessions: Callable[[], Session],
                 cache: ReadCache, base_url: str | None, work: WorkPool, prefix: str = "/fhir") -> None:
        self.search = search
        self.sessions = sessions
        self.work = work
        self.cache = cache
        self.base_url = base_url
        self.paths = {f"{prefix}/{t}": t for t in types}

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or scope["method"] != "GET":
            return Match.NONE, {}
        resource_type = self.paths.get(scope["path"])
        if resource_type is None:
            return Match.NONE, {}
        return Match.FULL, {"route": self, "endpoint": self.handle, "path_params": {"resource_type": resource_type}}

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        resource_type = scope["path_params"]["resource_type"]
        # The query and the Host header are the client's: the key holds their digest. It is made from the raw
        # scope, and the Request and the base URL of the answer's links only when the search runs: a search
        # answered from the cache builds neither.
        origin = (self.base_url,) if self.base_url else (scope.get("scheme", "http"), _header(scope, b"host") or "")
        key = ("search", resource_type, digest(scope["query_string"], *origin).hex())
        if _header(scope, b"prefer") is None:
            found = await self.cache.fetch(key, lambda: self._search(key, Request(scope, receive), True),
                                           self.work.run)
        else:
            found = await self.work.run(self._search, key, Request(scope, receive), False)
        body, tag = found
        if none_match(_header(scope, b"if-none-match"), tag):
            await send({"type": "http.response.start", "status": 304, "headers": [(b"etag", tag.encode())]})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", FHIR_JSON_UTF8.encode()), (b"content-length", str(len(body)).encode()),
            (b"etag", tag.encode())]})
        await send({"type": "http.response.body", "body": body})

    def _search(self, key: tuple[str, ...], request: Request, cacheable: bool) -> tuple[bytes, str]:
        generation = self.cache.generation
        base = fhir_base(request, self.base_url)
        pairs = parse_qsl(request.url.query, keep_blank_values=True)
        with self.sessions() as session:
            body = self.search(key[1], pairs, request, session, base)
        found = (body, content_etag(body))
        if cacheable:
            self.cache.put(key, found, len(body), generation)
        return found


def _header(scope: Scope, name: bytes) -> str | None:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


class FastReads:
    """The routes ahead of FastAPI for one group of types: the read, and with a cache the search where searches
    do not depend on who asks (`search` given). Made with the group's entries; their routes are made when the
    interaction table installs those entries in an app."""

    def __init__(self, store: ResourceStore, types: frozenset[str], read_hook: ReadHook | None,
                 search: SearchBundle | None, *, cache_seconds: float = 0.0) -> None:
        self.store = store
        self.types = types
        self.read_hook = read_hook
        self.search = search
        self.cache = ReadCache(cache_seconds) if cache_seconds > 0 else None
        if self.cache is not None:
            cache = self.cache
            store.listen(lambda session, new, _: cache.changed(session, new.resource_type, new.id))

    def read_route(self, ctx: ServiceContext) -> BaseRoute:
        if self.cache is not None:
            CacheMetrics([self.cache]).register(ctx.metrics.registry)
        return ReadRoute(self.store, self.types, self.read_hook, ctx.session, self.cache, loop_db=ctx.loop_db)

    def search_route(self, ctx: ServiceContext) -> BaseRoute | None:
        if self.cache is None or self.search is None:
            return None
        return SearchRoute(self.types, self.search, ctx.session, self.cache, ctx.settings.BASE_URL, ctx.work)
