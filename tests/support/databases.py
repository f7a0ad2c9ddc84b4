"""The database matrix: every storage and API test runs on SQLite and on PostgreSQL.

PostgreSQL comes from `TEST_DATABASE_URL` (CI: postgresql+psycopg://postgres@127.0.0.1:5432/test).
Each test gets its own schema there (dropped afterwards) so tests stay isolated, also
under pytest-xdist. When `CI=true` and PostgreSQL cannot be reached, the run fails:
it never silently skips the PostgreSQL half.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = ("sqlite", "postgresql")
ON_POSTGRES = ("database", "postgresql")
"""The user property of a test that ran on PostgreSQL alone."""


def postgres_url() -> str:
    return os.environ.get("TEST_DATABASE_URL", DEFAULT_POSTGRES_URL)


_reachable: bool | None = None


def postgres_reachable() -> bool:
    global _reachable
    if _reachable is None:
        try:
            engine = create_engine(postgres_url(), connect_args={"connect_timeout": 3})
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            engine.dispose()
            _reachable = True
        except Exception:  # noqa: BLE001 - any failure means unreachable
            _reachable = False
    return _reachable


def require_postgres() -> None:
    if postgres_reachable():
        return
    message = f"PostgreSQL is not reachable at {make_url(postgres_url()).render_as_string(hide_password=True)}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: the PostgreSQL tests must run)", pytrace=False)
    pytest.skip(message)


def fresh_postgres_schema() -> tuple[str, str]:
    """Create an empty schema; returns (its name, a URL whose connections use it)."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    engine = create_engine(postgres_url())
    with engine.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    url = make_url(postgres_url()).update_query_dict({"options": f"-csearch_path={schema}"})
    return schema, url.render_as_string(hide_password=False)


def drop_postgres_schema(schema: str) -> None:
    engine = create_engine(postgres_url())
    with engine.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def _database_url(backend: str, directory: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{directory}/cicatrix-test.db"
        return
    require_postgres()
    schema, url = fresh_postgres_schema()
    try:
        yield url
    finally:
        drop_postgres_schema(schema)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on each backend (the test runs once per backend)."""
    yield from _database_url(request.param, tmp_path)


@pytest.fixture
def postgres_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty PostgreSQL database, for what exists only there."""
    request.node.user_properties.append(ON_POSTGRES)  # its id names no backend: counted by this mark instead
    yield from _database_url("postgresql", tmp_path)


@pytest.fixture(scope="module", params=BACKENDS)
def module_database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Like `database_url` but shared by a module's tests (for read-only tests over loaded content)."""
    yield from _database_url(request.param, tmp_path_factory.mktemp("db"))


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    """Say plainly how many PostgreSQL-backed tests ran, so a green run cannot hide skipping them."""
    passed = terminalreporter.stats.get("passed", [])
    on_postgres = sum(1 for report in passed if "postgresql" in report.nodeid or ON_POSTGRES in report.user_properties)
    terminalreporter.write_line(f"PostgreSQL-backed tests passed: {on_postgres}")
