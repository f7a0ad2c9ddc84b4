"""The catalog's ASGI app (`services.catalog.app:app`).

Serves the scar-treatment knowledge (modalities, preparations, protocols, the
assessment Questionnaire, local terminology) over FHIR R4 REST.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from sqlmodel import Session, select
from starlette.concurrency import run_in_threadpool

from services.catalog.content import load_content
from services.catalog.searchparams import CATALOG_TYPES, SEARCH_PARAMS, SORTABLE
from services.catalog.security import access_policy
from services.catalog.settings import CatalogSettings
from services.catalog.tables import CatalogResource, CatalogResourceVersion, CatalogSearchIndex
from services.catalog.terminology import TerminologyOperations
from services.fhir.batch_transaction import BundleProcessor
from services.fhir.capability import CapabilityBuilder, ResourceCapability, search_params_of
from services.fhir.db import Migrations
from services.fhir.deps import ServiceContext
from services.fhir.interaction_table import InteractionTable
from services.fhir.interactions import ResourceInteractions
from services.fhir.outcome import Unprocessable
from services.fhir.service import build_app
from services.fhir.store import ResourceStore

VERSION = "0.1.0"
MIGRATIONS = Migrations(Path(__file__).parent / "migrations", "catalog_alembic_version")


def make_store() -> ResourceStore:
    return ResourceStore(CatalogResource, CatalogResourceVersion, CatalogSearchIndex, SEARCH_PARAMS)


def canonical_is_unique(session: Session, resource: dict[str, Any], resource_id: str | None) -> None:
    """Business rule of the catalog: `url` + `version` names exactly one live resource of a type."""
    url = resource.get("url")
    if not isinstance(url, str):
        return
    stmt = select(CatalogResource.id).where(
        CatalogResource.resource_type == resource["resourceType"], CatalogResource.url == url,
        CatalogResource.version == resource.get("version"), CatalogResource.deleted == False,  # noqa: E712
    )
    clash = [rid for rid in session.exec(stmt).all() if rid != resource_id]
    if clash:
        version = resource.get("version") or "(no version)"
        raise Unprocessable(
            f"{resource['resourceType']}/{clash[0]} already has url {url} and version {version}; "
            "publish a new version instead", code="duplicate", expression=f"{resource['resourceType']}.version")


def capability() -> CapabilityBuilder:
    """Who the catalog is in its CapabilityStatement; what it serves comes from its interaction table."""
    return CapabilityBuilder(
        name="CicatrixCatalog", title="Catalog", software_version=VERSION,
        description="Scar-treatment knowledge: modalities, preparations, protocols and the scar assessment.")


def interaction_table(store: ResourceStore, settings: CatalogSettings) -> InteractionTable:
    """Every interaction the catalog serves: the same RESTful ones on each of its types, batch and transaction,
    and the terminology operations."""
    table = InteractionTable(tuple(ResourceCapability(
        type=resource_type, search_params=search_params_of(SEARCH_PARAMS.get(resource_type, {}).values()),
        search_include=tuple(f"{resource_type}:{d.name}" for d in SEARCH_PARAMS[resource_type].values()
                             if d.type == "reference")) for resource_type in CATALOG_TYPES))
    interactions = ResourceInteractions(store=store, types=CATALOG_TYPES, search_params=SEARCH_PARAMS,
                                        sortable=SORTABLE, writable=CATALOG_TYPES,
                                        before_write=canonical_is_unique)
    table.add(interactions.entries(cache_seconds=settings.READ_CACHE_SECONDS))
    table.add(TerminologyOperations(store).entries())
    table.add(BundleProcessor(interactions).entries())
    return table


def load_shipped_content(session: Session, store: ResourceStore, settings: CatalogSettings) -> None:
    """The content under CONTENT_DIR, loaded idempotently: at start-up, or once before several workers start."""
    load_content(session, store, settings.CONTENT_DIR, CATALOG_TYPES, canonical_is_unique)


def create_app(settings: CatalogSettings | None = None) -> FastAPI:
    settings = settings or CatalogSettings()
    store = make_store()

    async def load(ctx: ServiceContext) -> None:
        if settings.LOAD_CONTENT:
            def run() -> None:
                with ctx.session() as session:
                    load_shipped_content(session, store, settings)
            await run_in_threadpool(run)

    table = interaction_table(store, settings)
    app = build_app(name="catalog", title="Cicatrix catalog", settings=settings, migrations=MIGRATIONS,
                    capability=capability(), table=table, startup=[load], access=access_policy(settings, table))
    app.state.ctx.extras["store"] = store
    return app


app = create_app()
