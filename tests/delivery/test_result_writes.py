"""Results of finished attempts are written with the next claim, in its transaction, not one transaction each.

A result that waits to be written keeps its row `sending` under this worker's lease; if the worker dies first,
the row comes back after its lease as ambiguous and the next attempt finds the delivery in the EHR.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text
from sqlmodel import Session

from services.careplan.delivery import claims
from services.careplan.delivery.outbox import Delivery, new_delivery
from services.careplan.relay import Relay, Work
from services.fhir.store import StoredResource, utcnow
from tests.delivery.conftest import deliveries, delivery_settings, drain
from tests.delivery.factories import bulk_plans, store_plan
from tests.delivery.test_processes import assert_each_once, transactions


def test_a_result_is_written_in_the_claim_that_then_takes_the_plans_next_version(engine):
    first = store_plan(engine)
    with Session(engine) as session:
        version_two = StoredResource("CarePlan", first.id, 2, first.last_updated, False, first.content)
        session.add(new_delivery(version_two, first))
        session.commit()
    [taken] = claims.claim(engine, worker="w1", limit=8, lease_seconds=60)
    result = claims.success(taken, shape="transaction", ehr_type="CarePlan", ehr_id="e1", ehr_version="1",
                            outputs=["CarePlan/e1/_history/1"], readback=[], attempts=1)

    with engine.connect() as connection:
        written, [second] = claims.record_and_claim(connection, [result], worker="w1", limit=8, lease_seconds=60)

    assert written == [True]
    assert (second.delivery.careplan_id, second.delivery.careplan_version) == (first.id, 2)
    [one, two] = deliveries(engine, first.id)
    assert (one.state, one.ehr_id, one.claimed_by, one.finished_at is not None) == ("completed", "e1", None, True)
    assert (two.state, two.claimed_by) == ("sending", "w1")


def test_a_claim_takes_due_rows_and_rows_whose_lease_ran_out_in_due_order(engine):
    """Pending rows that are due and rows whose lease ran out are looked for apart (each in due order, stopping at
    the limit), and the claim takes the earliest of both: nothing held or not yet due, nothing past the limit."""
    bulk_plans(engine, 5)
    now = utcnow()
    states = [("pending", -50, None), ("sending", -40, -5), ("sending", -30, 5), ("sending", -20, -1),
              ("pending", 60, None)]  # (state, due in minutes, lease ends in minutes)
    rows = deliveries(engine)
    with Session(engine) as session:
        for row, (state, due, lease) in zip(rows, states, strict=True):
            stored = session.get(Delivery, row.id)
            assert stored is not None
            stored.state, stored.next_attempt_at = state, now + timedelta(minutes=due)
            stored.claimed_until = None if lease is None else now + timedelta(minutes=lease)
            stored.claimed_by = None if lease is None else "gone"
            session.add(stored)
        session.commit()

    first = claims.claim(engine, worker="w1", limit=2, lease_seconds=60)
    rest = claims.claim(engine, worker="w2", limit=8, lease_seconds=60)

    assert [c.delivery.id for c in first] == [rows[0].id, rows[1].id]
    assert [c.was_ambiguous for c in first] == [False, True]
    assert [c.delivery.id for c in rest] == [rows[3].id]
    assert [(r.state, r.claimed_by) for r in deliveries(engine)] == [
        ("sending", "w1"), ("sending", "w1"), ("sending", "gone"), ("sending", "w2"), ("pending", None)]


def test_a_claim_reads_about_as_many_rows_as_it_takes_whatever_the_backlog(pg_engine):
    """With 1,000 deliveries due at the same moment, a claim of 8 reads a few dozen rows of the outbox, not all of
    them: PostgreSQL's plan of the very statement a claim sent, executed again and rolled back."""
    _, engine = pg_engine
    bulk_plans(engine, 1000)
    with engine.begin() as connection:
        connection.execute(text("UPDATE careplan_delivery SET next_attempt_at = now() - interval '1 second'"))
        connection.execute(text("ANALYZE careplan_delivery"))
    sent: list[tuple[str, Any]] = []

    def claim_sent(_connection, _cursor, statement, parameters, _context, _many) -> None:
        if "SKIP LOCKED" in statement:
            sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", claim_sent)
    try:
        assert len(claims.claim(engine, worker="w1", limit=8, lease_seconds=60)) == 8
    finally:
        event.remove(engine, "before_cursor_execute", claim_sent)
    [(statement, parameters)] = sent
    with engine.connect() as connection:
        [[plan]] = connection.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters).all()
        connection.rollback()

    def outbox_scans(node: dict[str, Any]) -> Iterator[tuple[str, int]]:
        """(how, rows read) of each scan that looks for due rows (the claim's own subqueries)."""
        if node.get("Relation Name") == "careplan_delivery" and node.get("Alias", "").startswith("careplan_delivery_"):
            yield node["Node Type"], node["Actual Rows"] * node["Actual Loops"]
        for child in node.get("Plans", []):
            yield from outbox_scans(child)

    scans = list(outbox_scans(plan[0]["Plan"]))
    assert scans and sum(rows for _, rows in scans) <= 64, scans


def test_a_result_whose_lease_was_taken_over_is_not_written(engine):
    store_plan(engine)
    [taken] = claims.claim(engine, worker="w1", limit=8, lease_seconds=60)
    with Session(engine) as session:  # the lease ran out and another worker claimed the row
        row = session.get(Delivery, taken.delivery.id)
        assert row is not None
        row.claimed_until = row.claimed_until - timedelta(hours=1)  # type: ignore[operator]
        session.add(row)
        session.commit()
    [again] = claims.claim(engine, worker="w2", limit=8, lease_seconds=60)
    stale = claims.success(taken, shape="transaction", ehr_type="CarePlan", ehr_id="e1", ehr_version="1",
                           outputs=[], readback=None, attempts=1)

    with engine.connect() as connection:
        written, claimed = claims.record_and_claim(connection, [stale], worker="w1", limit=8, lease_seconds=60)

    assert (written, claimed) == ([False], [])
    [row] = deliveries(engine)
    assert (row.state, row.claimed_by, row.lease, row.ambiguous) == ("sending", "w2", again.lease, True)


def test_results_writing_the_same_columns_go_as_one_statement_and_a_lost_lease_is_told_apart(engine):
    """Three successes and a retry: the successes are one executemany. The second success's lease was taken over,
    so the row count falls short and the rows are read back: only that one is reported unwritten, and only the
    written ones run their finish hook."""
    bulk_plans(engine, 4)
    taken = claims.claim(engine, worker="w1", limit=8, lease_seconds=60)
    lost = taken[1].delivery.id
    with Session(engine) as session:  # its lease ran out and another worker claimed the row
        row = session.get(Delivery, lost)
        assert row is not None
        row.claimed_until = row.claimed_until - timedelta(hours=1)  # type: ignore[operator]
        session.add(row)
        session.commit()
    [again] = claims.claim(engine, worker="w2", limit=8, lease_seconds=60)
    hooked: list[str] = []

    def success(claim: claims.Claim) -> claims.Result:
        return claims.success(claim, shape="transaction", ehr_type="CarePlan", ehr_id=f"e-{claim.delivery.id}",
                              ehr_version="1", outputs=[], readback=[], attempts=1,
                              then=lambda _connection: hooked.append(claim.delivery.id))

    results = [success(taken[0]), success(taken[1]), success(taken[2]),
               claims.retry(taken[3], attempts=1, next_attempt_at=utcnow(), ambiguous=False, error="503",
                            status=503, shape=None)]
    statements: list[tuple[str, bool]] = []

    def sent(_connection, _cursor, statement, _parameters, _context, many) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            statements.append((statement, many))

    event.listen(engine, "before_cursor_execute", sent)
    try:
        with engine.connect() as connection:
            written, _ = claims.record_and_claim(connection, results, worker="w1", limit=0, lease_seconds=60)
    finally:
        event.remove(engine, "before_cursor_execute", sent)

    assert written == [True, False, True, True]
    assert hooked == [taken[0].delivery.id, taken[2].delivery.id]
    assert [many for _, many in statements] == [True, False], "the successes together, the retry alone"
    rows = {row.id: row for row in deliveries(engine)}
    assert [rows[c.delivery.id].state for c in taken] == ["completed", "sending", "completed", "pending"]
    assert (rows[lost].claimed_by, rows[lost].lease) == ("w2", again.lease)


@pytest.mark.sandbox
def test_a_finish_hook_that_fails_holds_back_only_its_own_delivery(engine, database_url, ehr_sandbox):
    plans = bulk_plans(engine, 6)
    unlucky = deliveries(engine)[2].id
    failed: list[str] = []

    def hook(_connection, delivery, _state) -> None:
        if delivery.id == unlucky and delivery.lease == 1:  # the first claim's result cannot be recorded
            failed.append(delivery.id)
            raise RuntimeError("the event could not be recorded")

    settings = delivery_settings(database_url, ehr_sandbox.base_url, DELIVERY_LEASE_SECONDS=1.0)
    drain(settings, engine, finish_hooks=[hook], timeout=30)

    assert set(failed) == {unlucky}  # in the batch, then on its own
    rows = {row.id: row for row in deliveries(engine)}
    assert all(row.state == "completed" for row in rows.values())
    assert rows[unlucky].lease == 2, "its result was not written: the lease brought it back"
    assert all(row.lease == 1 for key, row in rows.items() if key != unlucky), "the others written the first time"
    assert_each_once(ehr_sandbox, plans)
    assert len(transactions(ehr_sandbox)) == len(plans), "the second attempt found it in the EHR"


class _Relay(Relay):
    """A relay over an in-memory queue: each task sleeps as long as its row says and returns its key."""

    channel = "unused"

    def __init__(self, delays: dict[str, float], *, batch_size: int) -> None:
        super().__init__(create_engine("sqlite://"), worker="w", batch_size=batch_size, poll_seconds=0.5,
                         grace_seconds=1.0, lease_seconds=60.0)
        self.due = dict(delays)
        self.writes: list[list[object]] = []
        self.written_at: dict[object, float] = {}
        self.finished_at: dict[str, float] = {}

    def _claim_work(self, limit: int, results: list[object]) -> list[tuple[str, Work]]:
        if results:
            self.writes.append(results)
            self.written_at |= {result: time.monotonic() for result in results}
        taken = list(self.due.items())[:limit]
        for key, _ in taken:
            del self.due[key]
        return [(key, self._work(key, delay)) for key, delay in taken]

    def _work(self, key: str, delay: float) -> Work:
        async def work() -> object:
            await asyncio.sleep(delay)
            self.finished_at[key] = time.monotonic()
            return key

        return work

    def _renew_work(self, keys: list[str]) -> None:
        pass

    def _open_count(self) -> int:
        return len(self.due)

    def _next_due(self) -> None:
        return None


def test_results_are_written_together_and_wait_at_most_the_settle_time():
    fast = {f"fast{i}": 0.01 for i in range(3)}
    relay = _Relay({**fast, "slow": 1.0}, batch_size=8)  # three finish at once, one long after them

    asyncio.run(asyncio.wait_for(relay.run(until_idle=True), timeout=10))

    assert sorted(key for write in relay.writes for key in write) == sorted([*fast, "slow"])  # each once
    assert sorted(relay.writes[0]) == sorted(fast), "the three written together, not one transaction each"
    for key in fast:  # not held back until the slow one finished
        assert relay.written_at[key] - relay.finished_at[key] < relay.settle_seconds + 0.2
