"""SQLModel engines and Alembic migrations, the same code on SQLite and PostgreSQL.

Each service keeps its own Alembic version table so both can share one PostgreSQL
database (as CI does) without their histories colliding.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import create_engine

log = logging.getLogger("cicatrix.db")


def make_engine(url: str) -> Engine:
    """An engine tuned for the backend: WAL and a busy timeout on SQLite, pre-ping on PostgreSQL."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


class Migrations:
    """The Alembic history of one service."""

    def __init__(self, script_location: Path, version_table: str) -> None:
        self.script_location = script_location
        self.version_table = version_table

    def config(self, engine: Engine) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(self.script_location))
        cfg.attributes["engine"] = engine
        cfg.attributes["version_table"] = self.version_table
        return cfg

    def upgrade(self, engine: Engine) -> None:
        command.upgrade(self.config(engine), "head")
        log.info("migrations applied", extra={"version_table": self.version_table})

    def head(self) -> str | None:
        return ScriptDirectory(str(self.script_location)).get_current_head()

    def current(self, engine: Engine) -> str | None:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"version_table": self.version_table})
            return context.get_current_revision()

    def is_current(self, engine: Engine) -> bool:
        return self.current(engine) == self.head()


def ping(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def run_migrations_from_env(context: ModuleType, target_metadata: MetaData) -> None:
    """Body of each service's Alembic env.py: online migrations on the engine the caller passed (`context` is
    alembic.context, the module that stands for the running migration environment)."""
    engine: Engine = context.config.attributes["engine"]
    version_table: str = context.config.attributes["version_table"]
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          version_table=version_table, compare_type=True,
                          render_as_batch=engine.dialect.name == "sqlite")
        context.run_migrations()
