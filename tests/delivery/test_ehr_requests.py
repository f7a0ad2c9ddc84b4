"""What one attempt costs the EHR: a first attempt is one transaction; only a possibly-applied earlier attempt
(an ambiguous failure, a lease that ran out) adds the search-before-resend.

Each case runs on SQLite and PostgreSQL against the real EHR sandbox and reads its request log.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlmodel import Session

from services.careplan.delivery import claims
from services.careplan.delivery.outbox import Delivery, new_delivery
from services.fhir.store import StoredResource
from tests.delivery.conftest import deliveries, delivery_settings, drain, identifiers_in_ehr
from tests.delivery.factories import store_plan

pytestmark = pytest.mark.sandbox


def fhir_requests(sandbox) -> list[tuple[str, str]]:
    """(method, path) of every FHIR interaction but the CapabilityStatement, in order."""
    return [(r["method"], r["path"]) for r in sandbox.requests() if r["path"] != "/fhir/metadata"]


def test_a_first_attempt_is_one_transaction_read_back_from_its_answer(engine, database_url, ehr_sandbox):
    plan = store_plan(engine)

    drain(delivery_settings(database_url, ehr_sandbox.base_url), engine)

    assert fhir_requests(ehr_sandbox) == [("POST", "/fhir")]  # no search, no read-back GET
    [bundle] = [r for r in ehr_sandbox.requests() if r["method"] == "POST"]
    assert bundle["headers"]["prefer"] == "return=representation"
    [delivery] = deliveries(engine)
    assert delivery.state == "completed" and delivery.attempts == 1
    assert delivery.dropped_elements() == []  # compared against the CarePlan in the transaction-response
    assert identifiers_in_ehr(ehr_sandbox) == [plan.parsed()["identifier"][0]["value"]]


def test_a_lease_that_ran_out_is_searched_before_anything_is_sent(engine, database_url, ehr_sandbox):
    store_plan(engine)
    [dead] = claims.claim(engine, worker="killed-worker", limit=1, lease_seconds=0.05)
    time.sleep(0.1)  # the worker holding it is gone; its lease runs out

    drain(delivery_settings(database_url, ehr_sandbox.base_url), engine)

    sent = fhir_requests(ehr_sandbox)
    assert sent == [("GET", "/fhir/CarePlan"), ("POST", "/fhir")]  # searched (nothing found), then sent
    [delivery] = deliveries(engine)
    assert delivery.state == "completed" and delivery.lease == dead.lease + 1


def test_a_retry_after_a_429_does_not_search(engine, database_url, ehr_sandbox):
    store_plan(engine)
    ehr_sandbox.queue_fault(action="status", status=429, retry_after="0", match={"method": "POST", "path": "/fhir"})

    drain(delivery_settings(database_url, ehr_sandbox.base_url), engine)

    # 429 says the request was not processed: the second attempt is as unambiguous as the first
    assert fhir_requests(ehr_sandbox) == [("POST", "/fhir"), ("POST", "/fhir")]
    [delivery] = deliveries(engine)
    assert (delivery.state, delivery.attempts) == ("completed", 2)


def test_a_retry_after_a_503_searches_first(engine, database_url, ehr_sandbox):
    store_plan(engine)
    ehr_sandbox.queue_fault(action="status", status=503, match={"method": "POST", "path": "/fhir"})

    drain(delivery_settings(database_url, ehr_sandbox.base_url), engine)

    # a 5xx may come after the EHR applied the write: look before sending again
    assert fhir_requests(ehr_sandbox) == [("POST", "/fhir"), ("GET", "/fhir/CarePlan"), ("POST", "/fhir")]
    [delivery] = deliveries(engine)
    assert (delivery.state, delivery.attempts) == ("completed", 2)


def test_a_delivery_whose_job_cannot_be_read_fails_alone_and_its_batch_goes_out(engine, database_url,
                                                                                 ehr_sandbox):
    plans = [store_plan(engine) for _ in range(3)]
    with Session(engine) as session:
        broken = session.get(Delivery, deliveries(engine, plans[1].id)[0].id)
        assert broken is not None
        broken.careplan_version = 7  # a version that was never stored: reading it fails
        session.add(broken)
        session.commit()

    drain(delivery_settings(database_url, ehr_sandbox.base_url, DELIVERY_MAX_ATTEMPTS=1), engine)

    states = {d.careplan_id: (d.state, d.last_error) for d in deliveries(engine)}
    assert states[plans[1].id][0] == "failed" and "internal error (NotFound)" in states[plans[1].id][1]
    assert [states[p.id][0] for p in (plans[0], plans[2])] == ["completed", "completed"]
    assert len(ehr_sandbox.store("CarePlan")) == 2


def test_claims_hand_each_due_row_out_once_in_version_order(engine):
    first, second = store_plan(engine), store_plan(engine)
    with Session(engine) as session:
        later = session.get(Delivery, deliveries(engine, second.id)[0].id)
        assert later is not None
        later.next_attempt_at = later.next_attempt_at + timedelta(hours=1)  # a retry not yet due
        session.add(later)
        version_two = StoredResource("CarePlan", first.id, 2, first.last_updated, False, first.content)
        session.add(new_delivery(version_two, first))  # queued behind version 1 of the same plan
        session.commit()

    [taken] = claims.claim(engine, worker="w1", limit=8, lease_seconds=60)

    assert (taken.delivery.careplan_id, taken.delivery.careplan_version, taken.lease) == (first.id, 1, 1)
    assert not taken.was_ambiguous
    assert claims.claim(engine, worker="w2", limit=8, lease_seconds=60) == []  # v1 held, v2 behind it, one not due
    [row, _] = deliveries(engine, first.id)
    assert (row.state, row.claimed_by, row.lease) == ("sending", "w1", 1) and row.first_attempt_at is not None

    assert claims.record_success(engine, taken, shape="transaction", ehr_type="CarePlan", ehr_id="e1",
                                 ehr_version="1", outputs=[], readback=[], attempts=1)
    [next_version] = claims.claim(engine, worker="w2", limit=8, lease_seconds=60)
    assert (next_version.delivery.careplan_id, next_version.delivery.careplan_version) == (first.id, 2)
