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
from services.careplan.ehr_capabilities import EHR_CAPABILITIES_DEFINITION, ehr_capabilities_router
from services.careplan.generate import CarePlanner, PlanHook, PlanRepository
from services.careplan.knowledge import Knowledge
from services.careplan.operations import APPLY_DEFINITION, GENERATE_DEFINITION, operations_router
from services.careplan.plan_updates import CarePlanChanges
from services.careplan.searchparams import SEARCH_PARAMS, SORTABLE
from services.careplan.security import access_policy, audit_trail, patient_compartment
from services.careplan.settings import CareplanSettings
from services.careplan.subscriptions.embedded import EmbeddedSubscriptions
from services.careplan.subscriptions.routes import subscriptions_router
from services.careplan.subscriptions.topics import TOPICS
from services.careplan.tables import CareplanResource, CareplanResourceVersion, CareplanSearchIndex
from services.careplan.tasks import RETRY_DEFINITION, tasks_router
from services.fhir.bytecache import CacheMetrics
from services.fhir.capability import (
    CapabilityBuilder,
    Operation,
    ResourceCapability,
    SearchParam,
    search_params_of,
)
from services.fhir.db import Migrations
from services.fhir.deps import ServiceContext
from services.fhir.fastread import install_read_route
from services.fhir.interactions import ResourceInteractions
from services.fhir.service import build_app
from services.fhir.store import ResourceStore
from services.fhir.workpool import WorkPool

VERSION = "0.1.0"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/"
TOPIC_CANONICAL_EXTENSION = BACKPORT + "StructureDefinition/capabilitystatement-subscriptiontopic-canonical"
STATUS_DEFINITION = BACKPORT + "OperationDefinition/backport-subscription-status"
EVENTS_DEFINITION = BACKPORT + "OperationDefinition/backport-subscription-events"
CDS_SERVICE_LIST = ", ".join(f"{s.id} ({s.hook})" for s in CDS_SERVICES.values())
MIGRATIONS = Migrations(Path(__file__).parent / "migrations", "careplan_alembic_version")
SERVED_TYPES = ("CarePlan", "QuestionnaireResponse", "AuditEvent")


def make_store() -> ResourceStore:
    return ResourceStore(CareplanResource, CareplanResourceVersion, CareplanSearchIndex, SEARCH_PARAMS)


def capability() -> CapabilityBuilder:
    builder = CapabilityBuilder(
        name="CicatrixCareplan", title="Care plans", software_version=VERSION,
        description="Scar assessments turned into scheduled, screened CarePlans delivered to the EHR. "
                    f"CDS Hooks 2.0 services at /cds-services (discovery lists them): {CDS_SERVICE_LIST}.",
    )
    for resource_type in SERVED_TYPES:
        params = search_params_of(SEARCH_PARAMS.get(resource_type, {}).values())
        operations: tuple[Operation, ...] = ()
        interactions: tuple[str, ...] = ("read", "vread", "history-instance", "search-type")
        if resource_type == "CarePlan":
            operations = (Operation("generate", GENERATE_DEFINITION,
                                    "Create the CarePlan for a scar assessment (idempotent per assessment)"),)
            interactions += ("update", "patch")  # status changes only, see plan_updates.py
        builder.add(ResourceCapability(type=resource_type, interactions=interactions,
                                       search_params=params, operations=operations))
    builder.add(ResourceCapability(
        type="PlanDefinition", interactions=(), versioning="no-version", read_history=False,
        conditional_read="not-supported",
        documentation="PlanDefinitions live in the catalog; this service applies them",
        operations=(Operation("apply", APPLY_DEFINITION, "The CarePlan a protocol would produce; stores nothing"),)))
    # delivery: one Task per delivery of a CarePlan version to the EHR, see tasks.py
    builder.add(ResourceCapability(
        type="Task", interactions=("read", "search-type"), versioning="versioned", read_history=False,
        conditional_read="not-supported",
        documentation="Delivery of a CarePlan version to the EHR (read-only; rendered from the delivery outbox)",
        search_params=(SearchParam("focus", "reference", "The CarePlan delivered"),
                       SearchParam("status", "token", "requested | in-progress | completed | failed | cancelled"),
                       SearchParam("_id", "token", "Logical id of the Task")),
        operations=(Operation("retry", RETRY_DEFINITION, "Re-queue a failed delivery"),)))
    # subscriptions: topic-based (Subscriptions R5 Backport IG), see services/careplan/subscriptions
    builder.add(ResourceCapability(
        type="Basic", interactions=("read", "search-type"), versioning="no-version", read_history=False,
        conditional_read="not-supported",
        documentation="The SubscriptionTopics this service publishes, as the backport IG represents them in R4",
        search_params=(SearchParam("_id", "token", "Logical id of the topic"),)))
    builder.add(ResourceCapability(
        type="Subscription", interactions=("create", "read", "search-type", "delete"), versioning="versioned",
        read_history=False, conditional_read="not-supported",
        profile="http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription",
        documentation="Topic-based subscriptions (rest-hook; payload empty, id-only or full-resource)",
        extensions=tuple({"url": TOPIC_CANONICAL_EXTENSION, "valueCanonical": topic.url} for topic in TOPICS),
        search_params=(SearchParam("_id", "token", "Logical id of the Subscription"),
                       SearchParam("status", "token", "requested | active | error | off"),
                       SearchParam("url", "uri", "The channel endpoint"),
                       SearchParam("criteria", "string", "The topic canonical (exact)")),
        operations=(Operation("status", STATUS_DEFINITION, "The subscription's status, event count and error"),
                    Operation("events", EVENTS_DEFINITION, "Past events by event number"))))
    builder.system_operations = (Operation(
        "ehr-capabilities", EHR_CAPABILITIES_DEFINITION,
        "What the EHR declares and the requests the dispatcher sends it (its request plan)"),)
    return builder


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
    app = build_app(name="careplan", title="Cicatrix care plans", settings=settings, migrations=MIGRATIONS,
                    capability=capability(), startup=[cds.start, delivery.start, subscriptions.start],
                    shutdown=[delivery.stop, subscriptions.stop, close_catalog, cds.stop],
                    access=access_policy(compartment), audit=trail, own_auth_prefixes=(CDS_PREFIX,),
                    readiness=[delivery.not_ready], work=work)
    CacheMetrics([catalog.cache, knowledge.expressions.results.cache, INGREDIENTS.cache]).register(
        app.state.ctx.metrics.registry)
    if settings.cds_cors_origins:
        app.add_middleware(CdsCors, origins=settings.cds_cors_origins)
    app.state.ctx.extras |= {"store": store, "catalog": catalog, "planner": planner, "plan_hooks": hooks,
                             "delivery": delivery, "subscriptions": subscriptions}
    delivery.register_metrics(app.state.ctx)
    app.include_router(tasks_router(compartment, poke=delivery.poke))  # before the generic /fhir/{type}/{id} routes
    app.include_router(ehr_capabilities_router(delivery))
    app.include_router(subscriptions_router(store, poke=subscriptions.poke))
    app.include_router(operations_router(planner, repository))
    app.include_router(cds_router(cds))
    interactions = ResourceInteractions(store=store, types=SERVED_TYPES, search_params=SEARCH_PARAMS,
                                        sortable=SORTABLE, update_rules={"CarePlan": CarePlanChanges()},
                                        **compartment.hooks())
    app.include_router(interactions.router())
    # reads by id ahead of FastAPI's routing, inside the audit trail and with the compartment checks; no cache:
    # patient data is read from the database every time
    install_read_route(app, interactions)
    return app


app = create_app()
