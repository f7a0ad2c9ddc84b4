"""What route handlers depend on: the running service's context and a database session per request.

Apart from the app factory (`services.fhir.service`) so that a router imports what its handlers need
without importing how the app is built.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.engine import Engine
from sqlmodel import Session

from services.fhir.capability import CapabilityBuilder
from services.fhir.db import Migrations
from services.fhir.loopdb import LoopDatabase
from services.fhir.observability import HttpMetrics
from services.fhir.settings import ServiceSettings
from services.fhir.workpool import WorkPool


@dataclass
class ServiceContext:
    """What a running service holds: its settings, database engine and metrics."""

    name: str
    settings: ServiceSettings
    engine: Engine
    migrations: Migrations
    metrics: HttpMetrics
    capability: CapabilityBuilder
    work: WorkPool
    """Where handlers run their CPU work (planning, validation, searches): never on the event loop."""
    loop_db: LoopDatabase | None = None
    """Statements the event loop runs itself on PostgreSQL (services.fhir.loopdb); None on SQLite."""
    capability_bytes: bytes = b""
    extras: dict[str, Any] = field(default_factory=dict)

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)


def get_context(request: Request) -> ServiceContext:
    """The context `build_app` keeps in the app's state."""
    ctx: ServiceContext = request.app.state.ctx
    return ctx


def get_session(request: Request) -> Iterator[Session]:
    """A session per request that rolls back unless the handler committed (unit-of-work default)."""
    with get_context(request).session() as session:
        yield session


ContextDep = Annotated[ServiceContext, Depends(get_context)]
SessionDep = Annotated[Session, Depends(get_session)]
