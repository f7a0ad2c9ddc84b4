"""Figure 5: delivery throughput of `cicatrix dispatch` against the EHR sandbox with 20 ms added latency.

Plans are queued by `$generate` with the embedded dispatcher off, then drained by 1 `cicatrix dispatch` worker
(context), and by 4 in each of `rounds` rounds (the same four processes, started once). Throughput is plans over
the time between the first attempt and the last finished delivery (from the outbox rows; the rows fall due only
once every process has logged that it started, so start-up is not counted). Before each drain the outbox rows
are set pending again and the sandbox emptied. The baseline is the sandbox's own accept rate for the very
transaction Bundles the dispatchers sent (taken from its request log), posted directly by the load generator
with as many connections as the 4 dispatchers keep in flight, with the same headers: before the first round and
after each. A round's ratio is its 4 dispatchers' rate over the mean of the baselines just before and just after
it, and the figure is the median of the rounds' ratios, as `measure.alternate` pairs the other figures. The
sandbox's JavaScript gets faster with every run (its CPU time per Bundle fell from about 6.1 to 5.2 ms over
three runs of the same Bundles), so a baseline measured only after the dispatchers would be measured on a warmer
sandbox than they were; and on a shared machine one drain of 300 plans lasts a few seconds, so a single round's
ratio moved by a fifth between runs of the same code.

The sandbox runs on a core of its own (`taskset`), the dispatchers on the other, so the figure measures the
dispatchers and not two CPU-bound processes taking turns on the same two cores. On a machine with one core, or
without taskset, both share what there is and the figure says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from services.careplan.delivery.outbox import NOTIFY_CHANNEL
from tests.bench import careplan, stack
from tests.bench.measure import Figure, ok_statuses

SANDBOX = stack.ROOT / "tools" / "ehr-sandbox" / "server.js"
LATENCY_MS = 20
BATCH = 8  # CAREPLAN_DELIVERY_BATCH_SIZE: deliveries one dispatcher has in flight
STARTED = b"dispatcher started"
"""What a dispatcher logs once it listens and claims (services.careplan.relay)."""


def pinned(core: int, command: list[str]) -> list[str]:
    """`command` bound to one CPU core, when the machine has a second one and taskset is there."""
    if PINNING:
        return ["taskset", "-c", str(core), *command]
    return command


PINNING = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
SANDBOX_CORE, DISPATCHER_CORE = 1, 0


def sandbox() -> stack.Server:
    node = shutil.which("node")
    if node is None or not (SANDBOX.parent / "node_modules").exists():
        raise RuntimeError("the EHR sandbox needs Node.js and `npm ci` in tools/ehr-sandbox (make deps)")
    port = stack.free_port()
    program, *command = pinned(SANDBOX_CORE, [node, str(SANDBOX)])
    return stack.Server("ehr-sandbox", command, port=port, program=program,
                        env={"EHR_SANDBOX_PORT": str(port), "EHR_SANDBOX_HOST": "127.0.0.1"},
                        ready_path="/_control/health")


def _configure(ehr: stack.Server) -> None:
    httpx.post(f"{ehr.base}/_control/reset").raise_for_status()
    httpx.post(f"{ehr.base}/_control/config", json={"latencyMs": LATENCY_MS}).raise_for_status()


@contextlib.contextmanager
def _dispatchers(url: str, env: dict[str, str], workers: int) -> Iterator[Callable[[], float]]:
    """`workers` `cicatrix dispatch` processes, started once for all the rounds they drain, and the function that
    drains the outbox with them (see `_drain`); they are stopped with SIGTERM at the end.

    Pending rows are held until every dispatcher has started: four processes importing on one core take seconds,
    which are not delivery time, and which a new start for every round would add to the run."""
    _hold(url)
    command = pinned(DISPATCHER_CORE, [sys.executable, "-m", "services.cli", "dispatch"])
    logs = [stack.LOGS / f"dispatch-{workers}-{i}.log" for i in range(workers)]
    processes = [subprocess.Popen(command, cwd=stack.ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                  stderr=open(log, "wb"))  # noqa: SIM115
                 for log in logs]
    try:
        deadline = time.monotonic() + 120
        while not all(STARTED in log.read_bytes() for log in logs):
            if time.monotonic() > deadline or any(process.poll() is not None for process in processes):
                raise RuntimeError(f"the dispatchers did not all start; see {', '.join(str(log) for log in logs)}")
            time.sleep(0.1)
        yield lambda: _drain(url, processes)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def _drain(url: str, processes: list[subprocess.Popen[bytes]]) -> float:
    """Release the held rows and wait until none is open; plans per second from the outbox rows: plans over the
    time between the first attempt and the last finished delivery."""
    _release(url)
    engine = create_engine(url)
    deadline = time.monotonic() + 600
    try:
        with engine.connect() as connection:
            while connection.execute(text(
                    "SELECT count(*) FROM careplan_delivery WHERE state IN ('pending', 'sending')")).scalar_one():
                connection.rollback()
                if time.monotonic() > deadline or any(process.poll() is not None for process in processes):
                    raise RuntimeError("the dispatchers did not drain the outbox; see bench-results/logs")
                time.sleep(0.1)
            row = connection.execute(text(
                "SELECT count(*) FILTER (WHERE state = 'completed'), count(*), "
                "extract(epoch FROM max(finished_at) - min(first_attempt_at)) FROM careplan_delivery")).one()
    finally:
        engine.dispose()
    completed, total, seconds = row
    if completed != total:
        raise RuntimeError(f"{total - completed} of {total} deliveries did not complete; see bench-results/logs")
    return completed / float(seconds)


def _hold(url: str) -> None:
    """Pending deliveries fall due in an hour: started dispatchers wait for `_release`."""
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE careplan_delivery SET next_attempt_at = now() + interval '1 hour' "
                                "WHERE state = 'pending'"))
    engine.dispose()


def _release(url: str) -> None:
    """Pending deliveries are due now, and the dispatchers are told so as `$generate` tells them."""
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE careplan_delivery SET next_attempt_at = now() WHERE state = 'pending'"))
        connection.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))
    engine.dispose()


def _requeue(url: str) -> None:
    """Every delivery pending again as it was queued, held like `_hold` until `_release`."""
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(
            "UPDATE careplan_delivery SET state = 'pending', attempts = 0, "
            "next_attempt_at = now() + interval '1 hour', "
            "first_attempt_at = NULL, finished_at = NULL, claimed_by = NULL, claimed_until = NULL, "
            "ambiguous = false, last_status = NULL, last_error = NULL, outcome = NULL, ehr_type = NULL, "
            "ehr_id = NULL, ehr_version = NULL, ehr_outputs = NULL, readback = NULL, shape = NULL"))
    engine.dispose()


def _sent(ehr: stack.Server) -> list[dict[str, Any]]:
    """The transaction Bundles the dispatchers posted, from the sandbox's request log."""
    log = httpx.get(f"{ehr.base}/_control/requests").json()["requests"]
    return [entry["body"] for entry in log if entry["method"] == "POST" and entry.get("path") == "/fhir"
            and isinstance(entry.get("body"), dict)]


def _direct(ehr: stack.Server, bundles: list[dict[str, Any]]) -> dict[str, Any]:
    """The sandbox, emptied, accepting `bundles` posted directly with the dispatchers' connections and headers."""
    _configure(ehr)
    headers = {"Content-Type": "application/fhir+json", "Prefer": "return=representation"}  # as the dispatchers
    direct = stack.load(ehr.port, [{"method": "POST", "path": "/fhir", "body": json.dumps(b), "headers": headers}
                                   for b in bundles], connections=4 * BATCH, total=len(bundles))
    ok_statuses(direct)
    return direct


def figure_delivery(catalog_server: stack.Server, *, plans: int, rounds: int, env: Any) -> Figure:
    name = f"Delivery: {plans:,} queued plans, EHR sandbox +{LATENCY_MS} ms, 1 and 4 dispatchers"
    with stack.postgres_schema("delivery") as url, sandbox() as ehr:
        settings = env(url, catalog_server, CAREPLAN_EHR_BASE_URL=f"{ehr.base}/fhir")
        with stack.cicatrix("careplan", settings, name="careplan-delivery") as planner:
            queued = stack.load(planner.port, careplan.generate_requests(plans, "delivery"), connections=16,
                                total=plans)
            ok_statuses(queued, ("201",))
        _configure(ehr)
        with _dispatchers(url, settings, 1) as drain:
            one = drain()
        directs = [_direct(ehr, _sent(ehr))]
        fours: list[float] = []
        _requeue(url)
        with _dispatchers(url, settings, 4) as drain:
            for round_ in range(rounds):
                if round_:
                    _requeue(url)
                _configure(ehr)
                fours.append(drain())
                bundles = _sent(ehr)
                directs.append(_direct(ehr, bundles))
    rates = [direct["rps"] for direct in directs]
    ratios = [four / ((before + after) / 2) for four, before, after in zip(fours, rates, rates[1:], strict=False)]
    ratio = statistics.median(ratios)
    placement = ("sandbox on core 1, dispatchers on core 0" if PINNING
                 else "sandbox and dispatchers share the cores (no second core or no taskset)")
    each = ", ".join(f"{four:,.0f}" for four in fours)
    return Figure("5", f"{name} ({placement})",
                  f"4 dispatchers: {statistics.median(fours):,.0f} plans/s (median of rounds {each}; ratios "
                  f"{', '.join(f'{r:.2f}' for r in ratios)}); 1 dispatcher: {one:,.0f} plans/s",
                  f"sandbox accepting the same {len(bundles):,} transaction Bundles posted directly "
                  f"({4 * BATCH} connections), before the first round and after each: "
                  f"{', '.join(f'{rate:,.0f}' for rate in rates)} Bundles/s", ratio, ">= 0.9 (4 dispatchers)",
                  ratio >= 0.9, note="median of the rounds' ratios; the request log keeps the last 10,000 requests",
                  raw={"direct": directs, "four": fours, "ratios": ratios})
