"""The care-plan service's ASGI app (`services.careplan.app:app`).

Assessments in (`CarePlan/$generate`, `PlanDefinition/$apply`), scheduled and
screened CarePlans out, stored with versions and readable over FHIR REST.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.careplan.allergens import INGREDIENTS
from services.careplan.assessment_limits import AssessmentLimits
from services.careplan.catalog_client import CatalogClient
from services.careplan.cds.discovery import SERVICES as CDS_SERVICES
from services.careplan.cds.router import PREFIX as CDS_PREFIX
from services.careplan.cds.router import CdsCors, CdsHooks, cds_router
from services.careplan.delivery.embedded import EmbeddedDelivery
from services.careplan.ehr_capabilities import ehr_capabilities_entries
from services.careplan.generate import CarePlanner, PlanHook, PlanRepository
from services.careplan.knowledge import Knowledge
from services.careplan.operations import operation_entries
from services.careplan.plan_updates import CarePlanChanges
from services.careplan.searchparams import SEARCH_PARAMS, SORTABLE
from services.careplan.security import access_policy, audit_trail, patient_compartment
from services.careplan.settings import CareplanSettings
from services.careplan.subscriptions.embedded import EmbeddedSubscriptions
from services.careplan.subscriptions.routes import BACKPORT, subscription_entries
from services.careplan.subscriptions.topics import TOPICS
from services.careplan.tables import CareplanResource, CareplanResourceVersion, CareplanSearchIndex
from services.careplan.tasks import task_entries
from services.fhir.bytecache import CacheMetrics
from services.fhir.capability import CapabilityBuilder, ResourceCapability, SearchParam, search_params_of
from services.fhir.db import Migrations
from services.fhir.deps import ServiceContext
from services.fhir.interaction_table import InteractionTable
from services.fhir.interactions import ResourceInteractions
from services.fhir.service import build_app
from services.fhir.store import ResourceStore
from services.fhir.workpool import WorkPool

VERSION = "0.1.0"
TOPIC_CANONICAL_EXTENSION = BACKPORT + "StructureDefinition/capabilitystatement-subscriptiontopic-canonical"
CDS_SERVICE_LIST = ", ".join(f"{s.id} ({s.hook})" for s in CDS_SERVICES.values())
MIGRATIONS = Migrations(Path(__file__).parent / "migrations", "careplan_alembic_version")
SERVED_TYPES = ("CarePlan", "QuestionnaireResponse", "AuditEvent")


def make_store() -> ResourceStore:
    return ResourceStore(CareplanResource, CareplanResourceVersion, CareplanSearchIndex, SEARCH_PARAMS)


def capability() -> CapabilityBuilder:
    """Who the care-plan service is in its CapabilityStatement; what it serves comes from its interaction table."""
    return CapabilityBuilder(
        name="CicatrixCareplan", title="Care plans", software_version=VERSION,
        description="Scar assessments turned into scheduled, screened CarePlans delivered to the EHR. "
                    f"CDS Hooks 2.0 services at /cds-services (discovery lists them): {CDS_SERVICE_LIST}.")


RESOURCES = (
    *(ResourceCapability(type=resource_type,
                         search_params=search_params_of(SEARCH_PARAMS.get(resource_type, {}).values()))
      for resource_type in SERVED_TYPES),
    ResourceCapability(
        type="PlanDefinition", versioning="no-version", read_history=False, conditional_read="not-supported",
        documentation="PlanDefinitions live in the catalog; this service applies them"),
    # delivery: one Task per delivery of a CarePlan version to the EHR, see tasks.py
    ResourceCapability(
        type="Task", versioning="versioned", read_history=False, conditional_read="not-supported",
        documentation="Delivery of a CarePlan version to the EHR (read-only; rendered from the delivery outbox)",
        search_params=(SearchParam("focus", "reference", "The CarePlan delivered"),
                       SearchParam("status", "token", "requested | in-progress | completed | failed | cancelled"),
                       SearchParam("_id", "token", "Logical id of the Task"))),
    # subscriptions: topic-based (Subscriptions R5 Backport IG), see services/careplan/subscriptions
    ResourceCapability(
        type="Basic", versioning="no-version", read_history=False, conditional_read="not-supported",
        documentation="The SubscriptionTopics this service publishes, as the backport IG represents them in R4",
        search_params=(SearchParam("_id", "token", "Logical id of the topic"),)),
    ResourceCapability(
        type="Subscription", versioning="versioned", read_history=False, conditional_read="not-supported",
        profile="http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription",
        documentation="Topic-based subscriptions (rest-hook; payload empty, id-only or full-resource)",
        extensions=tuple({"url": TOPIC_CANONICAL_EXTENSION, "valueCanonical": topic.url} for topic in TOPICS),
        search_params=(SearchParam("_id", "token", "Logical id of the Subscription"),
                       SearchParam("status", "token", "requested | active | error | off"),
                       SearchParam("url", "uri", "The channel endpoint"),
                       SearchParam("criteria", "string", "The topic canonical (exact)"))),
)
"""What the CapabilityStatement says of each type beside the interactions and operations of the table."""


def create_app(settings: CareplanSettings | None = None, *, plan_hooks: list[PlanHook] | None = None) -> FastAPI:
    settings = settings or CareplanSettings()
    store = make_store()
    catalog = CatalogClient(settings.CATALOG_URL, fresh_seconds=settings.CATALOG_CACHE_SECONDS,
                            timeout=settings.CATALOG_TIMEOUT_SECONDS, max_bytes=settings.CATALOG_CACHE_BYTES)
    hooks: list[PlanHook] = list(plan_hooks or [])
    work = WorkPool.of(settings)
    knowledge = Knowledge(catalog, condition_cache_bytes=settings.CONDITION_CACHE_BYTES)
    planner = CarePlanner(knowledge, settings.calendar(), settings.QUESTIONNAIRE_URL,
                          limits=AssessmentLimits.of(settings), run=work.run)
    # the outbox hook queues every CarePlan version for delivery in the transaction that writes it
    delivery = EmbeddedDelivery(settings)
    hooks.append(delivery.enqueue)
    subscriptions = EmbeddedSubscriptions(settings)  # events in the transaction of the change that causes them
    hooks.append(subscriptions.plan_hook)
    delivery.finish_hooks.append(subscriptions.delivery_hook)
    repository = PlanRepository(store, hooks)

    async def close_catalog(_: ServiceContext) -> None:
        await catalog.close()

    compartment = patient_compartment()  # patient/ scopes and the audit trail
    trail = audit_trail(store, compartment)
    cds = CdsHooks(settings, planner, trail)
    table = InteractionTable(RESOURCES)
    table.add(task_entries(compartment, poke=delivery.poke))
    table.add(ehr_capabilities_entries(delivery))
    table.add(subscription_entries(store, poke=subscriptions.poke))
    table.add(operation_entries(planner, repository))
    # reads by id are answered ahead of FastAPI's routing, inside the audit trail and with the compartment checks;
    # no cache: patient data is read from the database every time
    table.add(ResourceInteractions(store=store, types=SERVED_TYPES, search_params=SEARCH_PARAMS, sortable=SORTABLE,
                                   update_rules={"CarePlan": CarePlanChanges()}, **compartment.hooks()).entries())
    app = build_app(name="careplan", title="Cicatrix care plans", settings=settings, migrations=MIGRATIONS,
                    capability=capability(), table=table,
                    startup=[cds.start, delivery.start, subscriptions.start],
                    shutdown=[delivery.stop, subscriptions.stop, close_catalog, cds.stop],
                    access=access_policy(compartment, table), audit=trail, own_auth_prefixes=(CDS_PREFIX,),
                    readiness=[delivery.not_ready], work=work)
    CacheMetrics([catalog.cache, knowledge.expressions.results.cache, INGREDIENTS.cache]).register(
        app.state.ctx.metrics.registry)
    if settings.cds_cors_origins:
        app.add_middleware(CdsCors, origins=settings.cds_cors_origins)
    app.state.ctx.extras |= {"store": store, "catalog": catalog, "planner": planner, "plan_hooks": hooks,
                             "delivery": delivery, "subscriptions": subscriptions}
    delivery.register_metrics(app.state.ctx)
    app.include_router(cds_router(cds))
    return app


app = create_app()
