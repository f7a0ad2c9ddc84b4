"""Fixtures of the delivery tests: a migrated careplan database, dispatcher settings, and a drain helper.

The EHR is always the real sandbox over HTTP (`ehr_sandbox`); timings are shrunk (backoff tens of
milliseconds, timeouts under a second) so the whole fault matrix runs in seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from services.careplan.app import MIGRATIONS
from services.careplan.delivery.dispatcher import Dispatcher, run_until_idle
from services.careplan.delivery.outbox import Delivery
from services.careplan.settings import CareplanSettings
from services.fhir.db import make_engine

FAST = {
    "DELIVERY_BACKOFF_SECONDS": 0.05,
    "DELIVERY_BACKOFF_MAX_SECONDS": 0.2,
    "DELIVERY_POLL_SECONDS": 0.5,
    "DELIVERY_LEASE_SECONDS": 10.0,
    "EHR_CONNECT_TIMEOUT_SECONDS": 1.0,
    "EHR_TIMEOUT_SECONDS": 2.0,
    "DISPATCHER": "off",
    "LOG_LEVEL": "WARNING",
}


def delivery_settings(database_url: str, ehr_base_url: str, **overrides: Any) -> CareplanSettings:
    return CareplanSettings(DATABASE_URL=database_url, EHR_BASE_URL=ehr_base_url, **{**FAST, **overrides})


@pytest.fixture
def pg_engine() -> Iterator[tuple[str, Engine]]:
    """PostgreSQL only (URL, engine): multi-worker and LISTEN/NOTIFY cases. SQLite runs one dispatcher."""
    from tests.support.databases import drop_postgres_schema, fresh_postgres_schema, require_postgres

    require_postgres()
    schema, url = fresh_postgres_schema()
    engine = make_engine(url)
    MIGRATIONS.upgrade(engine)
    try:
        yield url, engine
    finally:
        engine.dispose()
        drop_postgres_schema(schema)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """The careplan database (SQLite and PostgreSQL), migrated to head."""
    engine = make_engine(database_url)
    MIGRATIONS.upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def drain(settings: CareplanSettings, engine: Engine, *, timeout: float = 20.0, **kwargs: Any) -> Dispatcher:
    """Run one dispatcher until no delivery is pending or sending."""
    dispatcher = Dispatcher(settings, engine, **kwargs)

    async def go() -> None:
        try:
            await run_until_idle(dispatcher, timeout)
        finally:
            await dispatcher.close()

    asyncio.run(go())
    return dispatcher


def deliveries(engine: Engine, careplan_id: str | None = None) -> list[Delivery]:
    with Session(engine) as session:
        stmt = select(Delivery).order_by(Delivery.created, Delivery.careplan_version)
        if careplan_id:
            stmt = stmt.where(Delivery.careplan_id == careplan_id)
        return list(session.exec(stmt).all())


def identifiers_in_ehr(sandbox: Any, resource_type: str = "CarePlan") -> list[str]:
    """Every plan identifier value the EHR holds, once per stored copy (duplicates show as repeats)."""
    return [i["value"] for r in sandbox.store(resource_type) for i in r.get("identifier", [])
            if i.get("system") == "https://fhir.cicatrix.org/careplan-id"]


@pytest.fixture
def api(engine: Engine, database_url: str, ehr_sandbox: Any) -> Iterator[Any]:
    """The careplan app on the same database (dispatcher off: tests drain explicitly), as a TestClient."""
    from services.careplan.app import create_app
    from tests.support.apps import running

    with running(create_app(delivery_settings(database_url, ehr_sandbox.base_url))) as client:
        yield client
