"""The care-plan service's ASGI app (`services.careplan.app:app`).

Assessments in (`CarePlan/$generate`, `PlanDefinition/$apply`), scheduled and
screened CarePlans out, stored with versions and readable over FHIR REST.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.careplan.catalog_client import CatalogClient
from services.careplan.generate import CarePlanner, PlanHook, PlanRepository
from services.careplan.knowledge import Knowledge
from services.careplan.operations import APPLY_DEFINITION, GENERATE_DEFINITION, operations_router
from services.careplan.searchparams import SEARCH_PARAMS, SORTABLE
from services.careplan.settings import CareplanSettings
from services.careplan.tables import CareplanResource, CareplanResourceVersion, CareplanSearchIndex
from services.fhir.capability import (
    COMMON_SEARCH_PARAMS,
    CapabilityBuilder,
    Operation,
    ResourceCapability,
    SearchParam,
)
from services.fhir.db import Migrations
from services.fhir.interactions import ResourceInteractions
from services.fhir.service import ServiceContext, build_app
from services.fhir.store import ResourceStore

VERSION = "0.1.0"
MIGRATIONS = Migrations(Path(__file__).parent / "migrations", "careplan_alembic_version")
SERVED_TYPES = ("CarePlan", "QuestionnaireResponse")


def make_store() -> ResourceStore:
    return ResourceStore(CareplanResource, CareplanResourceVersion, CareplanSearchIndex, SEARCH_PARAMS)


def capability() -> CapabilityBuilder:
    builder = CapabilityBuilder(
        name="CicatrixCareplan", title="Care plans", software_version=VERSION,
        description="Scar assessments turned into scheduled, screened CarePlans delivered to the EHR.",
    )
    for resource_type in SERVED_TYPES:
        params = COMMON_SEARCH_PARAMS + tuple(
            SearchParam(d.name, d.type, d.documentation) for d in SEARCH_PARAMS.get(resource_type, {}).values())
        operations = ()
        if resource_type == "CarePlan":
            operations = (Operation("generate", GENERATE_DEFINITION,
                                    "Create the CarePlan for a scar assessment (idempotent per assessment)"),)
        builder.add(ResourceCapability(type=resource_type,
                                       interactions=("read", "vread", "history-instance", "search-type"),
                                       search_params=params, operations=operations))
    builder.add(ResourceCapability(
        type="PlanDefinition", interactions=(), versioning="no-version", read_history=False,
        conditional_read="not-supported",
        documentation="PlanDefinitions live in the catalog; this service applies them",
        operations=(Operation("apply", APPLY_DEFINITION, "The CarePlan a protocol would produce; stores nothing"),)))
    return builder


def create_app(settings: CareplanSettings | None = None, *, plan_hooks: list[PlanHook] | None = None) -> FastAPI:
    settings = settings or CareplanSettings()
    store = make_store()
    catalog = CatalogClient(settings.CATALOG_URL, fresh_seconds=settings.CATALOG_CACHE_SECONDS,
                            timeout=settings.CATALOG_TIMEOUT_SECONDS)
    hooks: list[PlanHook] = list(plan_hooks or [])
    planner = CarePlanner(Knowledge(catalog), settings.calendar(), settings.QUESTIONNAIRE_URL)
    repository = PlanRepository(store, hooks)

    async def close_catalog(_: ServiceContext) -> None:
        await catalog.close()

    app = build_app(name="careplan", title="Cicatrix care plans", settings=settings, migrations=MIGRATIONS,
                    capability=capability(), shutdown=[close_catalog])
    app.state.ctx.extras |= {"store": store, "catalog": catalog, "planner": planner, "plan_hooks": hooks}
    app.include_router(operations_router(planner, repository))
    interactions = ResourceInteractions(store=store, types=SERVED_TYPES, search_params=SEARCH_PARAMS,
                                        sortable=SORTABLE)
    app.include_router(interactions.router())
    return app


app = create_app()
