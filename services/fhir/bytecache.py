"""In-memory caches bounded in bytes, keyed by a digest of their input, and their sizes in /metrics.

A cache whose keys come from requests grows with whatever clients send unless it is
bounded by what it holds, not by how many entries: one padded request can weigh a
thousand ordinary ones. `ByteCache` keeps at most `max_bytes` (as its owner measures
its values, plus a fixed cost per entry) and drops the least recently used first. Its
keys are SHA-256 digests of the normalised input, so a key costs 32 bytes however
long the input was. Entries are read and written from worker threads: a lock guards them.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Generic, Protocol, TypeVar

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

V = TypeVar("V")

ENTRY_OVERHEAD_BYTES = 200
"""What an entry costs besides its value: the digest, the ordered-dict node, the tuple around the value."""


def digest(*parts: str | bytes) -> bytes:
    """The key of normalised input `parts` (each part is length-prefixed, so ('ab', 'c') != ('a', 'bc'))."""
    sha = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        sha.update(len(data).to_bytes(8, "big"))
        sha.update(data)
    return sha.digest()


class ByteCache(Generic[V]):
    def __init__(self, name: str, max_bytes: int) -> None:
        self.name = name
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[bytes, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> V | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            self._entries.move_to_end(key)
            return found[0]

    def put(self, key: bytes, value: V, size: int) -> None:
        """Keep `value` (about `size` bytes); a value larger than a quarter of the cache is not kept."""
        cost = size + ENTRY_OVERHEAD_BYTES
        if cost > self.max_bytes // 4:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.size -= old[1]
            self._entries[key] = (value, cost)
            self.size += cost
            while self.size > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.size -= dropped


class MeasuredCache(Protocol):
    name: str
    size: int
    max_bytes: int

    def __len__(self) -> int: ...


class CacheMetrics(Collector):
    """`cicatrix_cache_bytes` and `cicatrix_cache_entries` of each cache, read when /metrics is scraped."""

    def __init__(self, caches: Iterable[MeasuredCache]) -> None:
        self.caches = list(caches)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        size = GaugeMetricFamily("cicatrix_cache_bytes", "Bytes held by an in-memory cache", labels=["cache"])
        limit = GaugeMetricFamily("cicatrix_cache_max_bytes", "Bytes an in-memory cache may hold", labels=["cache"])
        entries = GaugeMetricFamily("cicatrix_cache_entries", "Entries of an in-memory cache", labels=["cache"])
        for cache in self.caches:
            size.add_metric([cache.name], cache.size)
            limit.add_metric([cache.name], cache.max_bytes)
            entries.add_metric([cache.name], len(cache))
        yield from (size, limit, entries)

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self)
