"""The care-plan service's ASGI app (`services.careplan.app:app`)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.careplan.searchparams import SEARCH_PARAMS, SORTABLE
from services.careplan.settings import CareplanSettings
from services.careplan.tables import CareplanResource, CareplanResourceVersion, CareplanSearchIndex
from services.fhir.capability import COMMON_SEARCH_PARAMS, CapabilityBuilder, ResourceCapability, SearchParam
from services.fhir.db import Migrations
from services.fhir.interactions import ResourceInteractions
from services.fhir.service import build_app
from services.fhir.store import ResourceStore

VERSION = "0.1.0"
MIGRATIONS = Migrations(Path(__file__).parent / "migrations", "careplan_alembic_version")
PLAN_TYPES = ("CarePlan",)


def make_store() -> ResourceStore:
    return ResourceStore(CareplanResource, CareplanResourceVersion, CareplanSearchIndex, SEARCH_PARAMS)


def capability() -> CapabilityBuilder:
    builder = CapabilityBuilder(
        name="CicatrixCareplan", title="Care plans", software_version=VERSION,
        description="Scar assessments turned into scheduled, screened CarePlans delivered to the EHR.",
    )
    params = COMMON_SEARCH_PARAMS + tuple(
        SearchParam(d.name, d.type, d.documentation) for d in SEARCH_PARAMS["CarePlan"].values())
    builder.add(ResourceCapability(type="CarePlan", interactions=("read", "vread", "history-instance",
                                                                  "search-type"),
                                   search_params=params))
    return builder


def create_app(settings: CareplanSettings | None = None) -> FastAPI:
    settings = settings or CareplanSettings()
    store = make_store()
    app = build_app(name="careplan", title="Cicatrix care plans", settings=settings, migrations=MIGRATIONS,
                    capability=capability())
    app.state.ctx.extras["store"] = store
    interactions = ResourceInteractions(store=store, types=PLAN_TYPES, search_params=SEARCH_PARAMS,
                                        sortable=SORTABLE)
    app.include_router(interactions.router())
    return app


app = create_app()
