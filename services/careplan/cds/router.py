"""The `/cds-services` routes: discovery, the hook services and their feedback endpoints.

These routes sit outside `/fhir` and outside the API's SMART access control:
a CDS Client proves who it is with the CDS Hooks JWT (`trust.py`) on every call,
discovery included. Answers are plain JSON as the specification defines them;
errors are OperationOutcomes like everywhere else in Cicatrix.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from services.careplan.cds.discovery import (
    ORDER_SAFETY,
    ORDER_SAFETY_SELECT,
    SCAR_PLAN,
    SERVICES,
    CdsService,
    prefetch_templates,
)
from services.careplan.cds.feedback import feedback_events
from services.careplan.cds.hooks import HookCall, check_fhir_content, read_call
from services.careplan.cds.order_safety import order_safety_cards
from services.careplan.cds.prefetch import Prefetched, PrefetchResolver
from services.careplan.cds.scar_plan import scar_plan_cards
from services.careplan.cds.trust import CdsClientVerifier
from services.careplan.generate import CarePlanner
from services.careplan.settings import CareplanSettings
from services.fhir.access import Principal
from services.fhir.audit import AuditTrail
from services.fhir.auth import InsecureExposure, is_loopback
from services.fhir.deps import ContextDep, ServiceContext
from services.fhir.jsonio import read_json
from services.fhir.outcome import NotFound

log = logging.getLogger("cicatrix.cds")

PREFIX = "/cds-services"


class CdsHooks:
    """Everything the CDS routes share: settings, the JWT verifier, the prefetch resolver, planner and trail."""

    def __init__(self, settings: CareplanSettings, planner: CarePlanner, trail: AuditTrail) -> None:
        self.settings = settings
        self.planner = planner
        self.trail = trail
        self.verifier = CdsClientVerifier(settings) if settings.CDS_AUTH == "jwt" else None
        self.resolver = PrefetchResolver(timeout=settings.CDS_FHIR_TIMEOUT_SECONDS,
                                         max_bytes=settings.CDS_FHIR_MAX_BYTES)
        self.templates = prefetch_templates()

    async def start(self, _: ServiceContext) -> None:
        """Refuse to serve unauthenticated CDS Hooks beyond loopback, as the API does (auth.check_exposure)."""
        if self.verifier is None and not is_loopback(self.settings.HOST) and not self.settings.ALLOW_INSECURE:
            raise InsecureExposure(
                f"careplan refuses to start: CAREPLAN_HOST={self.settings.HOST} is reachable from other machines "
                "and CAREPLAN_CDS_AUTH=off would let anyone there call /cds-services. Set CAREPLAN_CDS_AUTH=jwt "
                "(README.md#cds-hooks), bind CAREPLAN_HOST=127.0.0.1, or set CAREPLAN_ALLOW_INSECURE=true.")

    async def stop(self, _: ServiceContext) -> None:
        await self.resolver.close()

    async def caller(self, request: Request, *also: str) -> Principal:
        """The CDS Client behind this call (anonymous with CDS_AUTH=off); 401 when its JWT does not hold.

        The JWT's `aud` must be the URL called, or one of the `also` paths (feedback accepts its service's URL:
        CDS Clients differ in which of the two they name)."""
        if self.verifier is None:
            return Principal.anonymous()
        base = (self.settings.CDS_BASE_URL or str(request.base_url)).rstrip("/")
        audiences = [base + path for path in (request.url.path, *also)]
        claims = await self.verifier.verify(request.headers.get("authorization"), audiences)
        return Principal.from_claims(claims)


def cds_router(hooks: CdsHooks) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["cds-hooks"])

    async def scar_plan(call: HookCall, data: Prefetched) -> list[dict[str, Any]]:
        return await scar_plan_cards(call, data, hooks.planner)

    async def order_safety(call: HookCall, data: Prefetched) -> list[dict[str, Any]]:
        knowledge = hooks.planner.knowledge
        formulary = await knowledge.formulary()
        cards: list[dict[str, Any]] = await hooks.planner.run(
            order_safety_cards, call, data, formulary, knowledge.expressions, hooks.settings.QUESTIONNAIRE_URL,
            hooks.settings.CLINIC_TIMEZONE, hooks.planner.limits)
        return cards

    answers: dict[str, Callable[[HookCall, Prefetched], Awaitable[list[dict[str, Any]]]]] = {
        SCAR_PLAN.id: scar_plan, ORDER_SAFETY.id: order_safety, ORDER_SAFETY_SELECT.id: order_safety}

    @router.get("", name="cds-discovery")
    async def discover(request: Request) -> Response:
        """CDS Hooks discovery: the services, their hooks and prefetch templates."""
        await hooks.caller(request)
        return JSONResponse({"services": [s.discovery(hooks.templates) for s in SERVICES.values()]})

    @router.post("/{service_id}", name="cds-service")
    async def call_service(service_id: str, request: Request) -> Response:
        """Call a CDS service with a hook; answers its cards."""
        await hooks.caller(request)
        body = await read_json(request)  # first: an oversized body is a 413 whatever the URL
        service = _service(service_id)
        call = read_call(body, service.hook)
        await hooks.planner.run(check_fhir_content, call)
        data = await hooks.resolver.resolve(call, {k: hooks.templates[k] for k in service.prefetch_keys})
        cards = await answers[service.id](call, data)
        log.info("cds hook answered", extra={"service": service.id, "cards": len(cards),
                                             "unchecked": len(data.unchecked)})
        return JSONResponse({"cards": cards})

    @router.post("/{service_id}/feedback", name="cds-feedback")
    async def feedback(service_id: str, request: Request, ctx: ContextDep) -> Response:
        """What the clinician did with the service's cards, stored as AuditEvents."""
        principal = await hooks.caller(request, f"{PREFIX}/{service_id}")
        body = await read_json(request)
        service = _service(service_id)
        client = request.client.host if request.client else None
        events = feedback_events(body, service.id, hooks.trail, principal, client,
                                 hooks.settings.CDS_MAX_FEEDBACK_ITEMS)
        await hooks.trail.record(ctx.session, events, ctx.loop_db)
        return JSONResponse({}, status_code=200)

    return router


def _service(service_id: str) -> CdsService:
    service = SERVICES.get(service_id)
    if service is None:
        raise NotFound(f"There is no CDS service '{service_id[:64]}' (GET {PREFIX} lists them)")
    return service


class CdsCors:
    """CORS for `/cds-services` only (browser-based CDS Clients); the FHIR API keeps its own CORS setting."""

    def __init__(self, app: ASGIApp, *, origins: list[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(app, allow_origins=origins, allow_credentials=False, allow_methods=["GET", "POST"],
                                   allow_headers=["Authorization", "Content-Type", "Accept", "X-Request-Id"],
                                   expose_headers=["X-Request-Id", "WWW-Authenticate"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and str(scope.get("path", "")).startswith(PREFIX):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
