"""Statements the event loop runs itself on PostgreSQL (services.fhir.loopdb): care-plan reads by id and the
audit trail's batches store and read exactly what the session path does, and the thread path stays wherever
the loop's connections cannot be used."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.fhir.loopdb import LoopDatabase, conninfo
from services.fhir.outcome import Gone, NotFound, ServiceUnavailable
from services.fhir.store import ResourceStore
from tests.careplan.conftest import example
from tests.support.apps import FHIR_JSON, careplan_app, running


def _event(reference: str) -> dict[str, Any]:
    return {"resourceType": "AuditEvent",
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
            "recorded": "2026-11-25T10:00:00.000Z", "agent": [{"requestor": True, "who": {"display": "test"}}],
            "source": {"observer": {"display": "test"}}, "entity": [{"what": {"reference": reference}}]}


def _index_rows(store: ResourceStore, session: Any, resource_id: str) -> list[tuple[Any, ...]]:
    index = store.I.__table__
    rows = session.execute(select(index.c.param, index.c.system, index.c.value, index.c.norm, index.c.low,
                                  index.c.high).where(index.c.resource_id == resource_id)).all()
    return sorted(tuple(row) for row in rows)


def test_only_postgresql_with_connections_to_spare_gets_loop_statements() -> None:
    url = "postgresql+psycopg://cicatrix:secret@db.example:5433/plans?options=-csearch_path%3Dt1"
    assert conninfo(url) == "postgresql://cicatrix:secret@db.example:5433/plans?options=-csearch_path%3Dt1"
    assert conninfo("sqlite:///./var/careplan.db") is None
    assert LoopDatabase.of("sqlite:///./var/careplan.db", 4, 1.0) is None
    assert LoopDatabase.of(url, 0, 1.0) is None, "LOOP_CONNECTIONS=0 keeps every statement in worker threads"
    database = LoopDatabase.of(url, 4, 1.0)
    assert database is not None and not database.usable(), "not opened: callers take the thread path"


def test_a_plan_read_its_audit_event_and_a_resubmission_are_loop_statements(postgres_database_url, catalog_url,
                                                                          monkeypatch):
    calls: list[str] = []
    for name in ("read_on_loop", "create_on_loop"):
        real = getattr(ResourceStore, name)

        async def counted(self: ResourceStore, *args: Any, _real: Any = real, _name: str = name) -> Any:
            calls.append(_name)
            return await _real(self, *args)

        monkeypatch.setattr(ResourceStore, name, counted)
    app = careplan_app(postgres_database_url, CATALOG_URL=catalog_url, LOG_LEVEL="WARNING", DISPATCHER="off")
    with running(app) as client:
        plan = client.post("/fhir/CarePlan/$generate", json=example("atrophic-pregnant"), headers=FHIR_JSON).json()
        calls.clear()
        read = client.get(f"/fhir/CarePlan/{plan['id']}")
        assert read.status_code == 200 and calls == ["read_on_loop", "create_on_loop"]
        ctx = app.state.ctx
        store: ResourceStore = ctx.extras["store"]
        with ctx.session() as session:
            stored = store.read(session, "CarePlan", plan["id"])
        assert read.content == stored.content and read.headers["etag"] == f'W/"{stored.version_id}"'
        events = client.get("/fhir/AuditEvent", params={"entity": f"CarePlan/{plan['id']}"}).json()["entry"]
        assert [e["resource"]["subtype"][0]["code"] for e in events].count("read") == 1
        assert client.get("/fhir/CarePlan/no-such-plan").status_code == 404
        calls.clear()
        again = client.post("/fhir/CarePlan/$generate", json=example("atrophic-pregnant"), headers=FHIR_JSON)
        assert again.status_code == 200 and again.json()["id"] == plan["id"], "the plan already made"
        assert calls[0] == "read_on_loop", "looked up on the event loop"


@pytest.fixture
def service(postgres_database_url, catalog_url) -> Iterator[tuple[TestClient, Any, ResourceStore]]:
    """A running care-plan service on PostgreSQL: its client (whose portal runs calls on the app's loop), its
    context and its store."""
    app = careplan_app(postgres_database_url, CATALOG_URL=catalog_url, LOG_LEVEL="WARNING", DISPATCHER="off")
    with running(app) as client:
        assert client.portal is not None
        yield client, app.state.ctx, app.state.ctx.extras["store"]


def test_loop_writes_store_what_session_writes_store(service):
    client, ctx, store = service
    [on_loop, other] = client.portal.call(store.create_on_loop, ctx.loop_db,
                                          [_event("CarePlan/one"), _event("CarePlan/two")])
    with ctx.session() as session:
        [in_session] = store.create_many(session, [_event("CarePlan/one")])
        session.commit()
        for written in (on_loop, other):
            read = store.read(session, "AuditEvent", written.id)
            assert (read.content, read.version_id, read.last_updated) == (
                written.content, 1, written.last_updated)
            [history] = store.history(session, "AuditEvent", written.id)
            assert history.content == written.content and history.method == "POST"
        assert _index_rows(store, session, on_loop.id) == _index_rows(store, session, in_session.id) != []
    assert client.portal.call(store.read_on_loop, ctx.loop_db, "AuditEvent", on_loop.id).content == on_loop.content
    with ctx.session() as session:
        store.delete(session, "AuditEvent", other.id)
        session.commit()
    with pytest.raises(Gone):
        client.portal.call(store.read_on_loop, ctx.loop_db, "AuditEvent", other.id)
    with pytest.raises(NotFound):
        client.portal.call(store.read_on_loop, ctx.loop_db, "AuditEvent", "never-written")


def test_a_loop_batch_is_atomic_and_refuses_what_its_columns_cannot_hold(service):
    client, ctx, store = service
    too_long = _event("CarePlan/too-long")
    too_long["type"]["system"] = "https://example.org/" + "s" * 600  # the index's system column holds 512
    with pytest.raises(psycopg.errors.StringDataRightTruncation):
        client.portal.call(store.create_on_loop, ctx.loop_db, [_event("CarePlan/fits"), too_long])
    with ctx.session() as session:
        assert session.execute(select(store.R.__table__.c.id).where(
            store.R.__table__.c.resource_type == "AuditEvent")).all() == [], "nothing of the batch was stored"
    with pytest.raises(ValueError, match="CarePlan"):
        client.portal.call(store.create_on_loop, ctx.loop_db, [{"resourceType": "CarePlan", "status": "draft"}])
    assert not asyncio.run(_usable(ctx.loop_db)), "another loop than the one that opened it takes the thread path"


async def _usable(database: LoopDatabase) -> bool:
    return database.usable()


def test_no_connection_within_the_budget_is_a_503_with_retry_after(postgres_database_url):
    database = LoopDatabase.of(postgres_database_url, 1, 0.2)
    assert database is not None

    async def exhausted() -> ServiceUnavailable:
        await database.open()
        try:
            async with database._connection():  # the only connection, held
                with pytest.raises(ServiceUnavailable) as refused:
                    await database.fetch_one(b"SELECT 1", ())
            assert await database.fetch_one(b"SELECT 1", ()) == (1,), "released, it serves again"
            return refused.value
        finally:
            await database.close()

    refused = asyncio.run(exhausted())
    assert refused.status == 503 and refused.headers["Retry-After"] == "1"


def test_a_transaction_commits_whole_or_not_at_all_and_hands_its_connection_back_idle(postgres_database_url):
    """BEGIN and COMMIT travel in the pipeline with the statements; a failed statement or an exception in the
    block rolls everything back, and the pool's one connection serves the next transaction."""
    database = LoopDatabase.of(postgres_database_url, 1, 5)
    assert database is not None
    committed: list[str] = []

    async def scenario() -> tuple[Any, ...] | None:
        await database.open()
        try:
            await database.execute(b"CREATE TABLE loop_tx (id INTEGER PRIMARY KEY)", ())
            async with database.transaction() as transaction:
                await transaction.execute(b"INSERT INTO loop_tx VALUES (%s)", (1,))
                transaction.after_commit(lambda: committed.append("first"))
                assert committed == [], "called only once committed"
            with pytest.raises(psycopg.errors.UniqueViolation):
                async with database.transaction() as transaction:
                    await transaction.execute(b"INSERT INTO loop_tx VALUES (%s)", (2,))
                    await transaction.execute(b"INSERT INTO loop_tx VALUES (%s)", (1,))
                    transaction.after_commit(lambda: committed.append("duplicate"))
            with pytest.raises(LookupError):
                async with database.transaction() as transaction:
                    await transaction.execute(b"INSERT INTO loop_tx VALUES (%s)", (3,))
                    raise LookupError
            return await database.fetch_one(b"SELECT array_agg(id ORDER BY id) FROM loop_tx", ())
        finally:
            await database.close()

    assert asyncio.run(scenario()) == ([1],), "the one connection, handed back after each failure, served on"
    assert committed == ["first"]
