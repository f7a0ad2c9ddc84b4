"""`cicatrix dispatch` as real processes: SIGKILL mid-batch, SIGTERM, and four workers sharing PostgreSQL.

The EHR sandbox is given a little latency so that deliveries are really in flight when a signal
arrives; the sandbox goes on applying requests whose client died, exactly like a real server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.delivery.conftest import deliveries, identifiers_in_ehr
from tests.delivery.factories import bulk_plans

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def dispatch(database_url: str, ehr_base_url: str, *, drain: bool = False, log: Path | None = None,
             **settings: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREPLAN_")}
    env |= {"CAREPLAN_DATABASE_URL": database_url, "CAREPLAN_EHR_BASE_URL": ehr_base_url,
            "CAREPLAN_DELIVERY_BACKOFF_SECONDS": "0.05", "CAREPLAN_DELIVERY_BACKOFF_MAX_SECONDS": "0.2",
            "CAREPLAN_DELIVERY_POLL_SECONDS": "0.5", "CAREPLAN_LOG_LEVEL": "INFO"}
    env |= {f"CAREPLAN_{k}": v for k, v in settings.items()}
    command = [sys.executable, "-m", "services.cli", "dispatch"] + (["--drain"] if drain else [])
    return subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=log.open("wb") if log else subprocess.DEVNULL)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def transactions(sandbox) -> list[dict]:
    return [r for r in sandbox.requests() if r["method"] == "POST" and r["path"] == "/fhir"]


def assert_each_once(sandbox, expected: list[str]) -> None:
    held = identifiers_in_ehr(sandbox)
    assert len(held) == len(set(held)), [i for i, n in Counter(held).items() if n > 1]
    assert sorted(held) == sorted(expected)
    assert len(sandbox.store("Provenance")) == len(expected)


def test_sigkill_mid_batch_then_restart_delivers_everything_exactly_once(engine, database_url, ehr_sandbox):
    plans = bulk_plans(engine, 24)
    ehr_sandbox.configure(latency_ms=150)
    worker = dispatch(database_url, ehr_sandbox.base_url, DELIVERY_LEASE_SECONDS="1.5", DELIVERY_BATCH_SIZE="8")
    try:
        wait_for(lambda: len(ehr_sandbox.store("CarePlan")) >= 8, 30, "the first batch")
        # from here each transaction waits a second in the EHR: one seen arriving is surely in flight at the kill
        ehr_sandbox.configure(latency_ms=1000)
        before = len(transactions(ehr_sandbox))
        wait_for(lambda: any(r["status"] is None for r in transactions(ehr_sandbox)[before:]), 30, "a batch in flight")
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
    held = [d for d in deliveries(engine) if d.state == "sending"]
    assert held, "the kill should leave claimed deliveries behind"

    ehr_sandbox.configure(latency_ms=0)
    restarted = dispatch(database_url, ehr_sandbox.base_url, drain=True, DELIVERY_LEASE_SECONDS="1.5")
    assert restarted.wait(timeout=60) == 0

    assert_each_once(ehr_sandbox, plans)
    assert all(d.state == "completed" for d in deliveries(engine))
    assert len([r for r in transactions(ehr_sandbox) if r["status"] == 200]) == len(plans)  # nothing sent twice


@pytest.mark.parametrize("grace", ["5", "0.05"], ids=["finish", "release"])
def test_sigterm_finishes_or_releases_in_flight_deliveries(pg_engine, ehr_sandbox, grace):
    database_url, engine = pg_engine
    plans = bulk_plans(engine, 8)
    ehr_sandbox.configure(latency_ms=250)
    worker = dispatch(database_url, ehr_sandbox.base_url, DISPATCHER_SHUTDOWN_GRACE_SECONDS=grace,
                      DELIVERY_BATCH_SIZE="4")
    wait_for(lambda: any(r["status"] is None for r in transactions(ehr_sandbox)), 30, "a delivery in flight")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0

    states = Counter(d.state for d in deliveries(engine))
    assert states["sending"] == 0  # nothing left claimed by the stopped worker
    if grace == "0.05":
        assert any(d.ambiguous for d in deliveries(engine) if d.state == "pending")
    ehr_sandbox.configure(latency_ms=0)
    assert dispatch(database_url, ehr_sandbox.base_url, drain=True).wait(timeout=60) == 0
    time.sleep(0.5)  # a released request may still be on its way through the sandbox's latency
    assert_each_once(ehr_sandbox, plans)


def test_four_workers_on_postgresql_deliver_500_plans_each_exactly_once(pg_engine, ehr_sandbox, tmp_path):
    url, engine = pg_engine
    plans = bulk_plans(engine, 500)
    logs = [tmp_path / f"worker-{i}.log" for i in range(4)]

    # Read-back off here: this test is about sharing the outbox; read-back has its own tests.
    workers = [dispatch(url, ehr_sandbox.base_url, drain=True, log=log, DELIVERY_BATCH_SIZE="16",
                        DELIVERY_READ_BACK="false") for log in logs]
    try:
        assert [w.wait(timeout=80) for w in workers] == [0, 0, 0, 0]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()

    assert_each_once(ehr_sandbox, plans)
    rows = deliveries(engine)
    assert all(d.state == "completed" for d in rows)
    retried = [(d.attempts, d.last_error) for d in rows if d.attempts > 1]
    accepted = [r for r in transactions(ehr_sandbox) if r["status"] == 200]
    assert len(accepted) == 500, retried  # no plan was sent twice, even where an attempt had to be retried
    delivered_by = Counter()
    for log in logs:
        for line in log.read_text().splitlines():
            entry = json.loads(line) if line.startswith("{") else {}
            if entry.get("msg") == "delivered":
                delivered_by[log.name] += 1
    assert sum(delivered_by.values()) == 500
    assert len(delivered_by) >= 2, delivered_by  # the work really was shared
