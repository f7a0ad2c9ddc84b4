"""The order of a benchmark run: which servers are up for which figures, and how long each measures."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.bench import careplan, catalog, cds, delivery, growth, stack, subscriptions
from tests.bench.measure import Figure


@dataclass(frozen=True)
class Sizes:
    rounds: int
    seconds: float
    memory_requests: int = 100_000
    careplan_memory_requests: int = 30_000
    catalog_large: int = 100_000
    careplans_large: int = 1_000_000
    delivery_plans: int = 300
    delivery_rounds: int = 3
    """A drain of 300 plans lasts a few seconds, so figure 5 takes the median of three; one of 2,000 lasts
    long enough alone (and three would add minutes of a sandbox slowing as it fills)."""
    subscriptions: int = 1_000

    @classmethod
    def of(cls, quick: bool, full: bool = False) -> Sizes:
        if quick:
            return cls(rounds=1, seconds=1.0, memory_requests=5_000, careplan_memory_requests=2_000,
                       catalog_large=5_000, careplans_large=20_000, delivery_plans=50, delivery_rounds=1,
                       subscriptions=100)
        if full:  # the sizes throughout: `make bench-full`, longer than the 10 minutes of `make bench`
            return cls(rounds=3, seconds=2.0, careplan_memory_requests=100_000, delivery_plans=2_000,
                       delivery_rounds=1)
        return cls(rounds=3, seconds=2.0)


def catalog_env(url: str, **extra: str) -> dict[str, str]:
    return {"CATALOG_DATABASE_URL": url, "CATALOG_LOG_LEVEL": "INFO", **extra}


def careplan_env(url: str, catalog_server: stack.Server, **extra: str) -> dict[str, str]:
    return {"CAREPLAN_DATABASE_URL": url, "CAREPLAN_CATALOG_URL": catalog_server.base + "/fhir",
            "CAREPLAN_DISPATCHER": "off", "CAREPLAN_LOG_LEVEL": "INFO", **extra}


class Progress:
    """Says on stderr how long each part of the run took: a run of several minutes should not be silent, and
    whoever keeps `make bench` under ten minutes needs to know where they go."""

    def __init__(self) -> None:
        self.since = time.monotonic()

    def done(self, what: str) -> None:
        now = time.monotonic()
        print(f"bench: {what} took {now - self.since:.0f} s", file=sys.stderr, flush=True)
        self.since = now


def run_all(wanted: set[str], *, quick: bool, full: bool = False, figures: list[Figure], notes: list[str],
            peer: Callable[[], tuple[str | None, str]]) -> None:
    sizes = Sizes.of(quick, full)
    progress = Progress()
    with stack.postgres_schema("main") as url, stack.cicatrix("catalog", catalog_env(url)) as server:
        ids = catalog.activity_ids(server.base)
        if "1" in wanted:
            figure, _, context = catalog.figure_reads(server, ids, rounds=sizes.rounds, seconds=sizes.seconds)
            figures.append(figure)
            figures.extend(context)
            quiet = catalog_env(url, CATALOG_LOG_LEVEL="WARNING", CATALOG_LOAD_CONTENT="false")
            with stack.cicatrix("catalog", quiet, name="catalog-quiet") as without_log:
                figure, _, _ = catalog.figure_reads(without_log, ids, rounds=sizes.rounds, seconds=sizes.seconds,
                                                   extra_baselines=False, label=", context: access log off")
                figure.target, figure.met = "", None
                figures.append(figure)
            progress.done("figure 1 (catalog reads, their baselines, access log off)")
        if "2" in wanted:
            figures.extend(catalog.figure_searches(server, rounds=sizes.rounds, seconds=sizes.seconds))
            progress.done("figure 2 (catalog searches)")
        if "3" in wanted:
            python, why = peer()
            figures.append(catalog.figure_peer(server, ids, python, rounds=sizes.rounds, seconds=sizes.seconds,
                                               why_not=why))
            progress.done("figure 3 (peer)")
        if "4" in wanted:
            # as deployed on two cores: two worker processes; one process as context
            with stack.cicatrix("careplan", careplan_env(url, server, CAREPLAN_WORKERS="2"),
                                name="careplan-workers") as planner:
                figures.append(careplan.figure_generate(planner, rounds=sizes.rounds, seconds=sizes.seconds,
                                                        workers=2))
            progress.done("figure 4 (two workers)")
        if wanted & {"4", "7", "8", "9"}:
            with cds.trusted_ehr() as (ehr, trust), \
                    stack.cicatrix("careplan", careplan_env(url, server, **trust)) as planner:
                if "8" in wanted:
                    figures.append(careplan.figure_reads(planner, server, ids, rounds=sizes.rounds,
                                                         seconds=sizes.seconds))
                if "9" in wanted:
                    figures.append(cds.figure_hooks(planner, ehr, rounds=sizes.rounds,
                                                    calls_per_round=50 if sizes.rounds == 1 else cds.CALLS_PER_ROUND))
                if "4" in wanted:
                    figure = careplan.figure_generate(planner, rounds=sizes.rounds, seconds=sizes.seconds, workers=1)
                    figure.name, figure.target, figure.met = "context: " + figure.name, "", None
                    figures.append(figure)
                if "7" in wanted:
                    figures.append(growth.memory("careplan", planner, careplan.memory_requests(),
                                                 total=sizes.careplan_memory_requests, connections=16,
                                                 allowed=("200",), warmup_allowed=("201", "404")))
            progress.done("figures 8, 9, 4 (one process) and 7 (care plans)")
        if "7" in wanted:
            with stack.cicatrix("catalog", catalog_env(url), name="catalog-memory") as fresh:
                figures.append(growth.memory("catalog", fresh, catalog.mixed_requests(ids),
                                             total=sizes.memory_requests, connections=64))
            progress.done("figure 7 (catalog memory)")
        if "5" in wanted:
            figures.append(delivery.figure_delivery(server, plans=sizes.delivery_plans,
                                                    rounds=sizes.delivery_rounds, env=careplan_env))
            progress.done("figure 5 (delivery)")
        if "10" in wanted:
            figures.append(subscriptions.figure_fan_out(server, subscriptions=sizes.subscriptions, env=careplan_env))
            progress.done("figure 10 (subscriptions)")
        if "6" in wanted:
            growth_rounds = 1 if sizes.rounds < 5 else 3
            figures.extend(growth.catalog_growth(url, large_count=sizes.catalog_large, rounds=growth_rounds,
                                                 seconds=sizes.seconds, env=catalog_env))
            figures.extend(growth.careplan_growth(server, small_count=1000, large_count=sizes.careplans_large,
                                                  rounds=growth_rounds, seconds=sizes.seconds, env=careplan_env))
            progress.done("figure 6 (growth)")
