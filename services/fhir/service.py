"""The FastAPI app every Cicatrix service is built on.

`build_app` wires what both services share: the edge middleware (request ids,
406/413, metrics, access log), OperationOutcome error handlers, the health and
metrics endpoints, `/fhir/metadata`, the routes and CapabilityStatement of the
service's interaction table, and a start-up that applies migrations when the embedded
default asks for it. A service brings its table and its own start-up work.
"""

from __future__ import annotations

import gc
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response

from services.fhir.access import AccessPolicy
from services.fhir.audit import AuditMiddleware, AuditTrail
from services.fhir.auth import AccessMiddleware, check_exposure, make_verifier
from services.fhir.capability import CapabilityBuilder
from services.fhir.conditional import none_match
from services.fhir.db import Migrations, make_engine, ping
from services.fhir.deps import ServiceContext
from services.fhir.edge import FhirEdgeMiddleware
from services.fhir.errors import install_error_handlers
from services.fhir.interaction_table import InteractionTable
from services.fhir.loopdb import LoopDatabase
from services.fhir.observability import HttpMetrics, configure_logging
from services.fhir.outcome import ServiceUnavailable
from services.fhir.responses import FhirResponse, etag
from services.fhir.settings import ServiceSettings
from services.fhir.workpool import WorkPool

__all__ = ["StartupHook", "build_app"]

log = logging.getLogger("cicatrix.service")

StartupHook = Callable[["ServiceContext"], Awaitable[None]]


_heap_frozen = False


def freeze_startup_heap() -> None:
    """Move what start-up built (modules, the FHIR model classes, the app) out of the garbage collector's
    generations, once per process: it lives as long as the process, and full collections traversing it cost
    about a fifth of a care-plan read's CPU time (gc.freeze, as the gc module's documentation suggests)."""
    global _heap_frozen
    if not _heap_frozen:
        _heap_frozen = True
        gc.collect()
        gc.freeze()


def build_app(*, name: str, title: str, settings: ServiceSettings, migrations: Migrations,
              capability: CapabilityBuilder, table: InteractionTable, startup: list[StartupHook] | None = None,
              shutdown: list[StartupHook] | None = None, access: AccessPolicy | None = None,
              audit: AuditTrail | None = None, own_auth_prefixes: tuple[str, ...] = (),
              readiness: list[Callable[[], str | None]] | None = None, work: WorkPool | None = None) -> FastAPI:
    """The service's app, serving the interactions of `table` and declaring them in `capability` (which says who
    the service is); `access` is its authorisation policy, `audit` its trail if it holds patient data,
    `own_auth_prefixes` the paths outside the FHIR API whose routes authenticate their callers themselves;
    `readiness`: checks /readyz adds to the database's, each returning why the service is not ready, or None;
    `work` the pool its handlers run CPU work in (one from the settings when not given)."""
    configure_logging(settings.LOG_LEVEL)
    table.declare(capability)
    metrics = HttpMetrics(name)
    ctx = ServiceContext(name=name, settings=settings, engine=make_engine(settings.DATABASE_URL),
                         migrations=migrations, metrics=metrics, capability=capability,
                         work=work or WorkPool.of(settings),
                         loop_db=LoopDatabase.of(settings.DATABASE_URL, settings.LOOP_CONNECTIONS,
                                                 settings.WORK_BUDGET_SECONDS))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        check_exposure(settings, name)  # first: a service that may not start touches nothing
        if settings.AUTO_MIGRATE:
            await run_in_threadpool(migrations.upgrade, ctx.engine)
        ctx.capability_bytes = capability.build_bytes(settings.BASE_URL)
        if ctx.loop_db is not None:
            await ctx.loop_db.open()
        for hook in startup or []:
            await hook(ctx)
        freeze_startup_heap()
        log.info("service started", extra={"service": name})
        try:
            yield
        finally:
            for hook in shutdown or []:
                await hook(ctx)
            if ctx.loop_db is not None:
                await ctx.loop_db.close()
            ctx.work.shutdown()
            ctx.engine.dispose()
            log.info("service stopped", extra={"service": name})

    # FastAPI's own OpenTelemetry hooks look up the environment on every request; metrics and logs are ours.
    app = FastAPI(title=title, lifespan=lifespan, docs_url="/docs", redoc_url=None,
                  openapi_url="/openapi.json", telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.ctx = ctx
    install_error_handlers(app)
    _add_security_middleware(app, ctx, access or AccessPolicy(), audit, own_auth_prefixes)
    app.add_middleware(FhirEdgeMiddleware, metrics=metrics, max_body_bytes=settings.MAX_BODY_BYTES)
    if settings.cors_origins:  # outermost: every answer, errors included, carries the CORS headers
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Accept", "If-Match", "If-None-Match",
                                          "If-Modified-Since", "If-None-Exist", "Prefer", "X-Request-Id"],
                           expose_headers=["ETag", "Location", "Last-Modified", "X-Request-Id", "WWW-Authenticate"])
    _add_operational_routes(app, ctx, readiness or [])
    table.install(app, ctx)  # after `/fhir/metadata`, which `[base]/{resource_type}` would take
    app.state.table = table
    return app


def _add_security_middleware(app: FastAPI, ctx: ServiceContext, access: AccessPolicy,
                             audit: AuditTrail | None, own_auth_prefixes: tuple[str, ...]) -> None:
    """Inside the edge (its errors become OperationOutcomes): the audit trail around access control."""
    settings = ctx.settings
    app.add_middleware(AccessMiddleware, policy=access, verifier=make_verifier(settings), realm=ctx.name,
                       own_auth_prefixes=own_auth_prefixes)
    if audit is not None:
        app.add_middleware(AuditMiddleware, trail=audit, sessions=ctx.session, loop_db=ctx.loop_db)
    if settings.AUTH_MODE == "jwt":
        ctx.capability.security = {
            "cors": bool(settings.cors_origins),
            "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                     "code": "SMART-on-FHIR"}]}],
            "description": "OAuth 2.0 bearer tokens (JWT) with SMART v2 scopes; see README.md#security",
        }


def _add_operational_routes(app: FastAPI, ctx: ServiceContext, readiness: list[Callable[[], str | None]]) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        """Process is alive (no dependencies checked: restarting would not fix them). Answered on the event
        loop itself, without a worker thread: it shows whether the loop is free."""
        return JSONResponse({"status": "ok", "service": ctx.name})

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> Response:
        """Ready for traffic: database reachable and every migration applied."""
        try:
            ping(ctx.engine)
            current = ctx.migrations.is_current(ctx.engine)
        except Exception as exc:  # noqa: BLE001 - any database failure means not ready
            log.warning("readiness check failed", extra={"error": type(exc).__name__})
            raise ServiceUnavailable("The database is not reachable") from None
        if not current:
            raise ServiceUnavailable("Database migrations are not applied; run `cicatrix migrate`")
        for check in readiness:
            reason = check()
            if reason:
                raise ServiceUnavailable(reason)
        return JSONResponse({"status": "ready", "service": ctx.name})

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/fhir/metadata", tags=["capabilities"])
    def capabilities(request: Request) -> Response:
        """The CapabilityStatement: exactly what this service implements."""
        if not ctx.capability_bytes:
            ctx.capability_bytes = ctx.capability.build_bytes(ctx.settings.BASE_URL)
        tag = etag(hashlib.sha256(ctx.capability_bytes).hexdigest()[:16])
        if none_match(request.headers.get("if-none-match"), tag):
            return Response(status_code=304, headers={"ETag": tag})
        return FhirResponse(ctx.capability_bytes, headers={"ETag": tag})
