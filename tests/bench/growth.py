"""Growth (6) and memory (7): the same requests against a small and a large database; RSS over 100,000 requests.

Growth measures what the database does, so the catalog's read cache is off here (READ_CACHE_SECONDS=0):
every lookup and search reaches PostgreSQL. Latencies are p50 at 4 connections (light load: service
time, not queueing). Both databases hold the same resources the requests name; the large one has the
bulk filler beside them (tests/bench/bulk.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.careplan.searchparams import SEARCH_PARAMS as CAREPLAN_PARAMS
from services.catalog.searchparams import SEARCH_PARAMS as CATALOG_PARAMS
from tests.bench import bulk, catalog, stack
from tests.bench.measure import Figure, alternate, http_load, ok_statuses

IDENTIFIER_SYSTEM = "https://fhir.cicatrix.org/careplan"
READ_BY_ID = "read by id"


def _p50_figures(number: str, what: str, small: stack.Server, large: stack.Server, sizes: tuple[str, str],
                 workloads: dict[str, list[dict[str, Any]]], *, rounds: int, seconds: float) -> list[Figure]:
    figures = []
    for label, requests in workloads.items():
        # A read by id takes a few milliseconds at most, so half the time still holds hundreds of reads a round;
        # three alternating rounds keep a moment of load from elsewhere from deciding the figure, as a single
        # round let it do for the catalog's reads in two of four full runs on one machine.
        turns, length = (max(rounds, 3), seconds / 2) if label == READ_BY_ID else (rounds, seconds)
        runs = alternate({"large": http_load(large, requests, connections=4, seconds=length, warmup=0.5),
                          "small": http_load(small, requests, connections=4, seconds=length, warmup=0.5)}, turns)
        ok_statuses(runs["large"])
        ok_statuses(runs["small"])
        ratio = runs["large"]["p50_ms"] / runs["small"]["p50_ms"]
        figures.append(Figure(number, f"{what}: {label}, p50 at 4 connections",
                              f"{sizes[1]}: p50 {runs['large']['p50_ms']:.2f} ms (p99 {runs['large']['p99_ms']:.1f})",
                              f"{sizes[0]}: p50 {runs['small']['p50_ms']:.2f} ms (p99 {runs['small']['p99_ms']:.1f})",
                              ratio, "<= 1.5 (p50 large / small)", ratio <= 1.5, raw=runs))
    return figures


def catalog_growth(small_url: str, *, large_count: int, rounds: int, seconds: float,
                   env: Callable[..., dict[str, str]]) -> list[Figure]:
    with stack.postgres_schema("catalog_large") as large_url:
        bulk.migrate("catalog", large_url)
        bulk.load(large_url, "catalog", bulk.catalog_templates(), CATALOG_PARAMS, large_count - 101, versions=False)
        uncached = {"CATALOG_READ_CACHE_SECONDS": "0"}
        with stack.cicatrix("catalog", env(small_url, **uncached), name="catalog-small") as small, \
                stack.cicatrix("catalog", env(large_url, **uncached), name="catalog-large") as large:
            ids = catalog.activity_ids(small.base)
            workloads = {READ_BY_ID: catalog.read_requests(ids)}
            workloads |= {f"search `{label}`": [stack.get(path)] for label, path in catalog.SEARCHES.items()}
            return _p50_figures("6", "Catalog, 100 vs 100,000 resources", small, large,
                                ("101 resources", f"{large_count:,} resources"), workloads, rounds=rounds,
                                seconds=seconds)


def careplan_growth(catalog_server: stack.Server, *, small_count: int, large_count: int, rounds: int, seconds: float,
                    env: Callable[..., dict[str, str]]) -> list[Figure]:
    templates = bulk.careplan_templates()
    with stack.postgres_schema("careplan_small") as small_url, stack.postgres_schema("careplan_large") as large_url:
        for url, count in ((small_url, small_count), (large_url, large_count)):
            bulk.migrate("careplan", url)
            bulk.load(url, "careplan", templates, CAREPLAN_PARAMS, count, versions=False)
        with stack.cicatrix("careplan", env(small_url, catalog_server), name="careplan-small") as small, \
                stack.cicatrix("careplan", env(large_url, catalog_server), name="careplan-large") as large:
            picks = range(0, small_count, max(1, small_count // 200))
            workloads = {
                READ_BY_ID: [stack.get(f"/fhir/CarePlan/bulk-{n}") for n in picks],
                "search `CarePlan?subject=Patient/...`": [stack.get(f"/fhir/CarePlan?subject=Patient/bulk-{n}")
                                                          for n in picks],
                "search `CarePlan?identifier=system|value`": [
                    stack.get(f"/fhir/CarePlan?identifier={IDENTIFIER_SYSTEM}|bench-{n}") for n in picks],
            }
            return _p50_figures("6", f"Care plans, {small_count:,} vs {large_count:,}", small, large,
                                (f"{small_count:,} plans", f"{large_count:,} plans"), workloads, rounds=rounds,
                                seconds=seconds)


def memory(name: str, server: stack.Server, requests: list[dict[str, Any]], *, total: int, connections: int,
           checkpoints: int = 5, allowed: tuple[str, ...] = ("200",), warmup_allowed: tuple[str, ...] = ()) -> Figure:
    """Figure 7: RSS after warm-up, then after each fifth of `total` requests (the 20,000 vs 100,000 comparison).

    The warm-up is one pass over `requests` (at least 2,000)."""
    warm = stack.load(server.port, requests, connections=connections, total=max(2000, len(requests)))
    ok_statuses(warm, allowed + warmup_allowed)
    rss = [server.rss_mb()]
    step = total // checkpoints
    for _ in range(checkpoints):
        run = stack.load(server.port, requests, connections=connections, total=step)
        ok_statuses(run, allowed)
        rss.append(server.rss_mb())
    growth = rss[-1] - rss[1]
    noise = max(2.0, 0.02 * rss[1])
    met = max(rss) < 200 and growth <= noise
    trail = ", ".join(f"{r:.0f}" for r in rss[1:])
    return Figure("7", f"Memory: {name}, RSS after warm-up and after {total:,} requests",
                  f"{rss[0]:.0f} MB after warm-up; {rss[-1]:.0f} MB after {total:,} (per {step:,}: {trail} MB)",
                  f"growth from {step:,} to {total:,} requests: {growth:+.1f} MB (noise allowance {noise:.1f} MB)",
                  None, "< 200 MB, no growth beyond noise", met, raw={"rss_mb": rss})
