"""`GET /fhir/$ehr-capabilities`: what the EHR declares and the requests the dispatcher sends it.

An integration engineer's view of the request plan (delivery/request_plan.py), as a
FHIR Parameters resource (OperationDefinition-ehr-capabilities in contracts/fhir):

    ehr          the EHR's FHIR base (CAREPLAN_EHR_BASE_URL)
    software     the EHR's CapabilityStatement.software, when it names one
    read         when its CapabilityStatement was read
    status       can-deliver | cannot-deliver | unreadable (the statement could not be read: `error` says why,
                 and nothing else follows; the dispatcher retries its deliveries meanwhile)
    shape        transaction | individual | document (absent when nothing can be delivered)
    request      repeated, in sending order: part `when` (first version, later version, after an
                 ambiguous attempt, ...) and part `request` (method, path, conditional headers)
    fallback     repeated: each fallback taken and the missing capability that caused it
    missing      repeated: what cannot be delivered and the capability that is missing
    profile      repeated: the US Core profiles the sent resources follow
    declared     repeated, per resource type the delivery uses: what the EHR declares for it

The statement is read as the dispatcher reads it (and shares its cache when the
dispatcher runs in this process); nothing in the answer is patient data.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.responses import Response

from services.careplan.delivery.capabilities import EhrCapabilities
from services.careplan.delivery.errors import EhrError
from services.careplan.delivery.payloads import US_CORE_CAREPLAN, US_CORE_DOCUMENT
from services.careplan.delivery.request_plan import CurrentPlan, RequestPlan
from services.careplan.settings import careplan_settings
from services.fhir.deps import ContextDep
from services.fhir.interaction_table import Entry, Permission
from services.fhir.responses import FhirResponse

EHR_CAPABILITIES_DEFINITION = "https://fhir.cicatrix.org/OperationDefinition/ehr-capabilities"
DELIVERY_TYPES = ("CarePlan", "DocumentReference", "Provenance")
PLANNED_SEARCHES = frozenset({"identifier", "patient", "type", "_tag", "target"})
"""The search parameters a request plan can use (the rest of a long list says nothing here)."""


def ehr_capabilities_entries(delivery: Any) -> list[Entry]:
    """`delivery`: the app's EmbeddedDelivery, which holds (or reads) the current request plan. The answer holds
    no patient data, but no patient's either: it needs `Task.r`, as the deliveries themselves."""

    async def ehr_capabilities(ctx: ContextDep) -> Response:
        """What the EHR declares and the requests the dispatcher sends it (a Parameters resource)."""
        ehr = careplan_settings(ctx.settings).EHR_BASE_URL
        try:
            current = await delivery.request_plan()
        except EhrError as exc:  # the EHR's state, reported as such: this service itself is fine
            return FhirResponse({"resourceType": "Parameters", "parameter": [
                {"name": "ehr", "valueUrl": ehr}, {"name": "status", "valueCode": "unreadable"},
                {"name": "error", "valueString": f"the EHR's CapabilityStatement could not be read: {exc}"}]})
        return FhirResponse(plan_parameters(current, ehr=ehr))

    return [Entry("$ehr-capabilities", ehr_capabilities, method="GET", permission=Permission("r", "Task"),
                  definition=EHR_CAPABILITIES_DEFINITION, tag="delivery",
                  documentation="What the EHR declares and the requests the dispatcher sends it (its request plan)")]


def plan_parameters(current: CurrentPlan, *, ehr: str) -> dict[str, Any]:
    plan, capabilities = current.plan, current.capabilities
    parameters: list[dict[str, Any]] = [{"name": "ehr", "valueUrl": ehr}]
    if capabilities.software:
        parameters.append({"name": "software", "valueString": capabilities.software})
    read = datetime.fromtimestamp(current.read_at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    parameters.append({"name": "read", "valueInstant": read})
    parameters.append({"name": "status", "valueCode": "cannot-deliver" if plan.cannot_create else "can-deliver"})
    if plan.shape:
        parameters.append({"name": "shape", "valueCode": plan.shape})
    parameters += [{"name": "request", "part": [{"name": "when", "valueString": when},
                                                {"name": "request", "valueString": request}]}
                   for when, request in plan.requests()]
    parameters += [{"name": "fallback", "valueString": text} for text in plan.fallbacks]
    parameters += [{"name": "missing", "valueString": text} for text in _missing(plan)]
    parameters += [{"name": "profile", "valueCanonical": url} for url, on in (
        (US_CORE_CAREPLAN, plan.us_core_careplan and plan.shape != "document"),
        (US_CORE_DOCUMENT, plan.us_core_document and plan.shape == "document")) if on]
    parameters += [{"name": "declared", "valueString": text} for text in declared(capabilities)]
    return {"resourceType": "Parameters", "parameter": parameters}


def _missing(plan: RequestPlan) -> list[str]:
    missing = [plan.cannot_create] if plan.cannot_create else []
    if plan.shape != "document" and plan.cannot_update:
        missing.append(plan.cannot_update)
    return missing


def declared(capabilities: EhrCapabilities) -> list[str]:
    """One line per thing the delivery depends on: system interactions, then each delivery type."""
    lines = [f"system: {', '.join(sorted(capabilities.system)) or 'no transaction or batch'}"]
    for kind in DELIVERY_TYPES:
        resource = capabilities.resources.get(kind)
        if resource is None:
            lines.append(f"{kind}: not declared")
            continue
        search = sorted((resource.search_params | capabilities.common_search_params) & PLANNED_SEARCHES)
        flags = [name for name, on in (("conditionalCreate", resource.conditional_create),
                                       ("conditionalUpdate", resource.conditional_update),
                                       ("versioned-update", resource.versioned_update)) if on]
        lines.append(f"{kind}: {', '.join(sorted(resource.interactions)) or 'no interaction'}"
                     + (f"; searches used here: {', '.join(search)}" if search else "")
                     + (f"; {', '.join(flags)}" if flags else ""))
    return lines
