"""Catalog figures: read by id (1), search (2), the fhirstarter peer (3); growth (6) and memory (7) use these loads.

Every baseline answers with the bytes Cicatrix itself served for the same URL, fetched just before.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.bench import native, stack
from tests.bench.measure import Figure, alternate, http_load, ok_statuses, throughput

PROTOCOL = "https://fhir.cicatrix.org/PlanDefinition/atrophic-scar-protocol"
SEARCHES = {
    "ActivityDefinition?status=active&_count=20": "/fhir/ActivityDefinition?status=active&_count=20",
    "protocol with _include": (f"/fhir/PlanDefinition?url={PROTOCOL}&_include=PlanDefinition:definition"
                               "&_include:iterate=ActivityDefinition:product"),
}


def activity_ids(base: str) -> list[str]:
    bundle = httpx.get(f"{base}/fhir/ActivityDefinition", params={"_count": "1000", "_elements": "id"}).json()
    return sorted(entry["resource"]["id"] for entry in bundle["entry"])


def bodies(base: str, paths: list[str]) -> dict[str, bytes]:
    """What Cicatrix answers for each path: the bytes every baseline must return."""
    found = {}
    with httpx.Client(base_url=base, headers={"Accept": "application/fhir+json"}) as client:
        for path in paths:
            response = client.get(path)
            response.raise_for_status()
            found[path] = response.content
    return found


def read_requests(ids: list[str], prefix: str = "/fhir") -> list[dict[str, Any]]:
    return [stack.get(f"{prefix}/ActivityDefinition/{i}") for i in ids]


def figure_reads(catalog: stack.Server, ids: list[str], *, rounds: int, seconds: float,
                 extra_baselines: bool = True, label: str = "") -> tuple[Figure, dict[str, Any], list[Figure]]:
    """Figure 1: reads by id, 64 connections, against the bare Starlette app returning the same bytes on the same
    server stack, and against nginx serving them as static files."""
    paths = [f"/fhir/ActivityDefinition/{i}" for i in ids]
    served = bodies(catalog.base, paths)
    requests = read_requests(ids)
    with stack.baseline("bare", served) as bare:
        runs = alternate({"cicatrix": http_load(catalog, requests, connections=64, seconds=seconds),
                          "bare": http_load(bare, requests, connections=64, seconds=seconds)}, rounds)
    ok_statuses(runs["bare"])
    ok_statuses(runs["cicatrix"])
    ratio = runs["paired"]["ratio"]
    figure = Figure("1", f"Catalog read by id, 64 connections ({len(ids)} ActivityDefinitions in turn){label}",
                    throughput(runs["cicatrix"]), "bare Starlette, same bytes and server stack: " +
                    throughput(runs["bare"]), ratio, ">= 0.85", ratio >= 0.85, raw=runs)
    context: list[Figure] = []
    if extra_baselines:
        context.append(against_nginx("1", f"Catalog read by id against nginx, 64 connections{label}", catalog,
                                     served, requests, ">= 0.30", rounds=rounds, seconds=seconds))
        for kind, label in (("fastapi-bytes", "FastAPI route returning the stored bytes"),
                            ("fastapi-model", "FastAPI route validating the R4B model per read")):
            with stack.baseline(kind, served) as server:
                run = alternate({kind: http_load(server, requests, connections=64, seconds=seconds)}, 1)[kind]
            ok_statuses(run)
            context.append(Figure("1", f"context: {label}", "", throughput(run), run["rps"] / runs["bare"]["rps"],
                                  "", None, note="ratio to bare Starlette", raw={kind: run}))
    return figure, runs["cicatrix"], context


def figure_searches(catalog: stack.Server, *, rounds: int, seconds: float) -> list[Figure]:
    """Figure 2: the two searches, against the bare app returning the same Bundle bytes."""
    figures = []
    served = bodies(catalog.base, list(SEARCHES.values()))
    with stack.baseline("bare", served) as bare:
        for label, path in SEARCHES.items():
            requests = [stack.get(path)]
            runs = alternate({"cicatrix": http_load(catalog, requests, connections=64, seconds=seconds),
                              "bare": http_load(bare, requests, connections=64, seconds=seconds)},
                             rounds)
            ok_statuses(runs["bare"])
            ok_statuses(runs["cicatrix"])
            ratio = runs["paired"]["ratio"]
            figures.append(Figure("2", f"Catalog search `{label}`, 64 connections ({len(served[path]):,} bytes)",
                                  throughput(runs["cicatrix"]), "bare Starlette, same Bundle: " +
                                  throughput(runs["bare"]), ratio, ">= 0.5", ratio >= 0.5, raw=runs))
    label, path = next(iter(SEARCHES.items()))
    figures.append(against_nginx("2", f"Catalog search `{label}` against nginx, 64 connections", catalog,
                                 {path: served[path]}, [stack.get(path)], ">= 0.20", rounds=rounds, seconds=seconds))
    return figures


def against_nginx(number: str, name: str, catalog: stack.Server, served: dict[str, bytes],
                  requests: list[dict[str, Any]], target: str, *, rounds: int, seconds: float) -> Figure:
    """Cicatrix beside nginx serving the same bytes as static files: the physical limit of this machine."""
    program, why = native.ensure("nginx")
    if program is None:
        return Figure(number, name, "", "nginx unavailable: " + why, None, target, None)
    with native.nginx_static(program, served) as nginx:
        runs = alternate({"cicatrix": http_load(catalog, requests, connections=64, seconds=seconds),
                          "nginx": http_load(nginx, requests, connections=64, seconds=seconds)}, rounds)
    ok_statuses(runs["cicatrix"])
    ok_statuses(runs["nginx"])
    ratio = runs["paired"]["ratio"]
    bound = float(target.removeprefix(">= "))
    return Figure(number, name, throughput(runs["cicatrix"]), "nginx, same bytes as static files, one worker: " +
                  throughput(runs["nginx"]), ratio, target, ratio >= bound, raw=runs)


def figure_peer(catalog: stack.Server, ids: list[str], peer_python: str | None, *, rounds: int, seconds: float,
                why_not: str = "") -> Figure:
    """Figure 3: the same reads from fhirstarter (bench environment only) next to Cicatrix's."""
    name = "Peer: the same reads served by fhirstarter, 64 connections"
    if peer_python is None:
        return Figure("3", name, "", "fhirstarter unavailable: " + why_not, None, ">= 8", None)
    paths = [f"/fhir/ActivityDefinition/{i}" for i in ids]
    served = bodies(catalog.base, paths)
    data = stack.write_json({k: v.decode() for k, v in served.items()})
    port = stack.free_port()
    with stack.Server("peer-fhirstarter", ["tests/bench/peer.py", str(port), data], port=port,
                      program=peer_python, ready_path="/metadata") as peer:
        peer_requests = read_requests(ids, prefix="")
        runs = alternate({"cicatrix": http_load(catalog, read_requests(ids), connections=64, seconds=seconds),
                          "fhirstarter": http_load(peer, peer_requests, connections=64, seconds=seconds)},
                         rounds)
    stack.remove(data)
    ok_statuses(runs["fhirstarter"])
    ok_statuses(runs["cicatrix"])
    ratio = runs["paired"]["ratio"]
    return Figure("3", name, throughput(runs["cicatrix"]), "fhirstarter 4.2.0: " + throughput(runs["fhirstarter"]),
                  ratio, ">= 8", ratio >= 8, raw=runs)


def mixed_requests(ids: list[str]) -> list[dict[str, Any]]:
    """The catalog's memory workload: reads of every ActivityDefinition, both searches, the CapabilityStatement."""
    requests = read_requests(ids)
    for path in SEARCHES.values():
        requests.append(stack.get(path))
    requests.append(stack.get("/fhir/metadata"))
    requests.append(stack.get("/fhir/ActivityDefinition?name=therapeutic&_elements=title,timingTiming"))
    return requests
