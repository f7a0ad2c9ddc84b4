"""Hostile requests against real servers on loopback, watched for stalls: what the abuse tests share.

Both services run under uvicorn in processes of their own (tests/support/servers.py), each wrapped in a
`LoopWatch`, so that the clients and probes of the test take nothing from the servers' interpreters.
`Attack.run` sends hostile requests while another thread polls `/healthz`, then checks the three things
one request must never do to a service: block its event loop (more than 100 ms of the loop thread's time
between two ticks), stall its probes (more than 250 ms, less what the machine's own load explains: a control
thread in the test process measures that), or take longer than its bound.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, TypeVar

import httpx

from tests.careplan.conftest import assessment_of, example
from tests.support.servers import ServerProcess

T = TypeVar("T")
FHIR_JSON = {"content-type": "application/fhir+json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}
LOOP_BLOCK_LIMIT = 0.1
"""Seconds a handler may keep the event loop's thread busy without a break."""
HEALTHZ_STALL_LIMIT = 0.25
"""Seconds a /healthz probe may take while hostile requests run."""


def metric(service: ServerProcess, name: str, **labels: str) -> float:
    """One sample of the service's /metrics, read over HTTP as a scraper would."""
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in httpx.get(f"{service.url}/metrics").text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{wanted} is not in /metrics")


@dataclass
class Outcome:
    seconds: float
    longest_probe: float


class Attack:
    """Hostile requests against `target` while /healthz of every service in `watched` is probed."""

    def __init__(self, target: ServerProcess, *watched: ServerProcess) -> None:
        self.target = target
        self.watched = (target, *watched)

    def run(self, send: Callable[[httpx.Client], T], *, within: float,
            probe_limit: float | None = HEALTHZ_STALL_LIMIT) -> tuple[T, Outcome]:
        """`send` the hostile requests; `probe_limit` None when the service is meant to be overloaded (then only
        its event loop is held to its limit: an overloaded service answers probes late, never not at all)."""
        for service in self.watched:
            service.watched(reset=True)
        probes: list[tuple[float, float]] = []
        starved: list[tuple[float, float, float]] = []
        failures: list[str] = []
        done = threading.Event()

        def probe(service: ServerProcess) -> None:
            with httpx.Client(base_url=service.url, timeout=30) as http:
                while not done.is_set():
                    started = time.perf_counter()
                    status = http.get("/healthz").status_code
                    probes.append((started, time.perf_counter()))
                    if status != 200:
                        failures.append(f"/healthz answered {status}")
                    time.sleep(0.02)

        def control() -> None:
            """How late this process wakes from 10 ms sleeps: the machine's load, which no service causes (the
            services run in processes of their own), is not held against them."""
            while not done.is_set():
                started = time.perf_counter()
                time.sleep(0.01)
                ended = time.perf_counter()
                starved.append((started, ended, ended - started - 0.01))

        threads = [threading.Thread(target=probe, args=(service,), daemon=True) for service in self.watched]
        threads.append(threading.Thread(target=control, daemon=True))
        for thread in threads:
            thread.start()
        started = time.perf_counter()
        try:
            with httpx.Client(base_url=self.target.url, timeout=120) as http:
                result = send(http)
        finally:
            seconds = time.perf_counter() - started
            done.set()
            for thread in threads:
                thread.join()
        outcome = Outcome(seconds, max((stall(probe, starved) for probe in probes), default=0.0))
        assert not failures, failures
        assert seconds < within, f"the hostile requests took {seconds:.1f} s (bound {within} s)"
        for service in self.watched:
            block = service.watched()["longest_block"]
            assert block < LOOP_BLOCK_LIMIT, f"a handler kept the event loop busy for {block * 1000:.0f} ms"
        assert probe_limit is None or outcome.longest_probe < probe_limit, (
            f"/healthz took {outcome.longest_probe * 1000:.0f} ms while the hostile requests ran")
        return result, outcome


def stall(probe: tuple[float, float], starved: list[tuple[float, float, float]]) -> float:
    """A probe's time, less the longest the test process itself was kept from running meanwhile."""
    started, ended = probe
    machine = max((late for since, until, late in starved if since < ended and until > started), default=0.0)
    return max(0.0, ended - started - machine)


# ----------------------------------------------------------------- hostile input


def with_allergies(answers: list[dict[str, Any]], name: str = "atrophic-allergy-camphor",
                   intolerances: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A `$generate` request whose assessment answers the allergy question with `answers`."""
    parameters = example(name)
    assessment = assessment_of(parameters)
    assessment["item"] = [i for i in assessment["item"] if i["linkId"] != "allergy"]
    if answers:
        assessment["item"].append({"linkId": "allergy", "answer": answers})
    parameters["parameter"] += [{"name": "allergyIntolerance", "resource": resource} for resource in intolerances or []]
    return parameters


def many_allergies(count: int) -> list[dict[str, Any]]:
    """`count` distinct free-text allergies, short enough that 38,000 fit in the 1 MB body limit."""
    return [{"valueString": f"{i:x}"} for i in range(count)]


def intolerance(text: str) -> dict[str, Any]:
    return {"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/example"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "227313005", "display": text}]}}


def as_apply(parameters: dict[str, Any]) -> dict[str, Any]:
    """The same assessment as `PlanDefinition/$apply` Parameters (subject + a data Bundle)."""
    subject = next(p for p in parameters["parameter"] if p["name"] == "subject")
    data = [p["resource"] for p in parameters["parameter"] if p["name"] in ("assessment", "allergyIntolerance")]
    return {"resourceType": "Parameters", "parameter": [
        subject, {"name": "data", "resource": {"resourceType": "Bundle", "type": "collection",
                                               "entry": [{"resource": resource} for resource in data]}}]}


def padded_apply(call: int, padding: int) -> dict[str, Any]:
    """An `$apply` whose assessment items carry `padding` characters of text each (distinct per call)."""
    parameters = example("atrophic-chest-visible-vessels")
    for item in assessment_of(parameters)["item"]:
        item["text"] = f"{call}-" + "x" * padding
    return as_apply(parameters)


def with_start(start: date, identifier: str) -> dict[str, Any]:
    parameters = example("atrophic-pregnant")
    assessment_of(parameters)["identifier"]["value"] = identifier
    parameters["parameter"].append({"name": "start", "valueDate": start.isoformat()})
    return parameters


def shifted(days: int) -> date:
    return date.today() + timedelta(days=days)


def fresh(document: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(document)
