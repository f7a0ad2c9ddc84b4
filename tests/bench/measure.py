"""Figures and how they are measured: a subject next to its baseline, in alternating rounds.

A shared 2-core machine drifts while a benchmark runs (other processes, frequency changes), so a subject
and its baseline are never measured minutes apart: they take turns, round after round, and each figure
is the median over its rounds. The ratio is subject / baseline (for latencies, baseline / subject, so
that above 1 is always better).
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.bench import native, stack

Load = Callable[[], dict[str, Any]]


@dataclass
class Figure:
    """One row of the table."""

    number: str
    name: str
    cicatrix: str
    baseline: str
    ratio: float | None
    target: str
    met: bool | None
    note: str = ""
    raw: dict[str, Any] = field(default_factory=dict)


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each measure over rounds (requests summed, statuses merged)."""
    statuses: dict[str, int] = {}
    for run in runs:
        for status, count in run["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    cpu = [r["cpu_us"] for r in runs if "cpu_us" in r]
    return {"rps": statistics.median(r["rps"] for r in runs),
            "cpu_us": statistics.median(cpu) if cpu else None,
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p99_ms": statistics.median(r["p99_ms"] for r in runs),
            "requests": sum(r["requests"] for r in runs), "statuses": statuses,
            "errors": sum(r["errors"] for r in runs), "rounds": len(runs)}


def alternate(loads: dict[str, Load], rounds: int) -> dict[str, dict[str, Any]]:
    """Run each load once per round, in turn, `rounds` times; the median of each.

    With two loads, `paired.ratio` (of the first to the second) is the median of the per-round ratios: each round's
    pair ran seconds apart, under the same conditions."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in loads}
    for _ in range(rounds):
        for name, load in loads.items():
            runs[name].append(load())
    result = {name: median_run(r) for name, r in runs.items()}
    if len(loads) == 2:  # the subject is named first, its baseline second
        subject, base = (runs[name] for name in loads)
        result["paired"] = {"ratio": statistics.median(a["rps"] / b["rps"] for a, b in zip(subject, base, strict=True)
                                                       if b["rps"])}
    return result


@functools.cache
def wrk() -> tuple[str | None, str]:
    """wrk's path (installed on first use), or (None, why): plain GET loads then use the Python generator."""
    return native.ensure("wrk")


def http_load(server: stack.Server, requests: list[dict[str, Any]], *, connections: int, seconds: float,
              warmup: float = 1.0) -> Load:
    """A timed load: wrk for plain GETs where it can be had, the Python generator for everything else."""
    program, _ = wrk()
    if program and all(r.get("method", "GET") == "GET" and not r.get("body") and not r.get("headers")
                       for r in requests):
        return lambda: native.load(program, server.port, requests, connections=connections, seconds=seconds,
                                   warmup=warmup, pid=server.process.pid)
    return lambda: stack.load(server.port, requests, connections=connections, seconds=seconds, warmup=warmup,
                              pid=server.process.pid)


def throughput(run: dict[str, Any]) -> str:
    """'2,844 req/s (p50 20.9 ms, p99 85.5 ms; 310 µs CPU per request)'."""
    cpu = f"; {run['cpu_us']:,.0f} µs server CPU/req" if run.get("cpu_us") else ""
    return f"{run['rps']:,.0f} req/s (p50 {run['p50_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms{cpu})"


def ok_statuses(run: dict[str, Any], allowed: tuple[str, ...] = ("200",)) -> None:
    """A benchmark of errors measures nothing: refuse figures whose answers were not the expected ones."""
    wrong = {s: n for s, n in run["statuses"].items() if s not in allowed}
    if wrong or run["errors"]:
        raise RuntimeError(f"unexpected answers {wrong} / {run['errors']} connection errors")
