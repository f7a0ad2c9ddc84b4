"""The care-plan operations: `CarePlan/$generate` and `PlanDefinition/$apply`.

`$generate` creates and stores the plan (201 with Location; 200 with the same plan
when the assessment was already submitted). The assessment is checked before any
stored plan is looked up, and a stored plan is returned only to a caller that may
read plans (`CarePlan.r`): a create-only caller resubmitting an assessment gets 200
with the plan's Location and ETag and an OperationOutcome instead, as if it had
sent `Prefer: return=OperationOutcome`, so its retry still succeeds without
reading what it was not granted. `$apply` answers the CarePlan the protocol would
produce and stores nothing, as the Clinical Practice Guidelines operation defines.
When the assessment draws plausibility warnings, `$apply` answers a Parameters
resource with the CarePlan as `return` and the warnings as an OperationOutcome in
`outcome` (the plan itself carries them too, as notes); without warnings the single
`return` is the CarePlan itself, as FHIR operations answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from services.careplan.careplan_builder import plan_identifier
from services.careplan.generate import CarePlanner, PlanRepository, PlanResult
from services.careplan.intake import (
    GenerateRequest,
    assessment_key,
    parse_apply,
    parse_generate,
    stored_response_id,
)
from services.fhir.compartment import current_access, touched
from services.fhir.deps import ContextDep, ServiceContext
from services.fhir.interaction_table import Entry, Permission
from services.fhir.jsonio import read_json
from services.fhir.loopdb import on_loop
from services.fhir.outcome import FhirError, Issue, NotFound, operation_outcome
from services.fhir.responses import FhirResponse
from services.fhir.rest import fhir_base, resource_headers, write_response
from services.fhir.scopes import required_scope
from services.fhir.store import StoredResource

GENERATE_DEFINITION = "https://fhir.cicatrix.org/OperationDefinition/CarePlan-generate"
APPLY_DEFINITION = "https://fhir.cicatrix.org/OperationDefinition/PlanDefinition-apply"


def operation_entries(planner: CarePlanner, repository: PlanRepository) -> list[Entry]:
    """`$generate` needs `CarePlan.c` (it stores a plan), `$apply` `CarePlan.r` (it computes one, stores nothing)."""

    async def generate(request: Request, ctx: ContextDep) -> Response:
        """Create the CarePlan for an assessment (idempotent per assessment)."""
        parsed = await planner.run(_checked, planner, parse_generate, await read_json(request))
        key = assessment_key(parsed.assessment)
        base = fhir_base(request, ctx.settings.BASE_URL)
        checked = None
        if key is not None:
            checked = await planner.check(parsed)  # an invalid request learns nothing about what is stored
            if not on_loop(ctx.loop_db):  # on the loop, the write looks it up with the site's active plan
                found = await _existing(ctx, repository, parsed.subject, key)
                if found is not None:
                    return _already_generated(request, found, base)
        identifier = plan_identifier(key, parsed.subject) if key else None
        reference = f"QuestionnaireResponse/{stored_response_id(parsed.subject, key)}" if key else None
        try:
            result = await planner.draft_plan(parsed, status=parsed.status, identifier=identifier,
                                              assessment_reference=reference, checked=checked)
        except FhirError:
            found = await _existing(ctx, repository, parsed.subject, key) if key and on_loop(ctx.loop_db) else None
            if found is not None:  # the plan made before answers, though planning it again now fails
                return _already_generated(request, found, base)
            raise

        assert identifier is not None, "check_assessment refuses assessments without id or identifier"
        stored, created = await _save(ctx, repository, result, identifier)
        if not created:
            return _already_generated(request, stored, base)
        return write_response(request, stored, base=base, created=True)

    async def apply(request: Request) -> Response:
        """The CarePlan a protocol would produce for an assessment; stores nothing."""
        parsed = await planner.run(_checked, planner, parse_apply, await read_json(request))
        return _applied(await planner.draft_plan(parsed, status="draft"))

    async def apply_instance(resource_id: str, request: Request) -> Response:
        """$apply of one catalog PlanDefinition by id."""
        parsed = await planner.run(_checked, planner, parse_apply, await read_json(request))
        protocol = await planner.knowledge.protocol_by_id(resource_id)
        if protocol is None:
            raise NotFound(f"The catalog has no PlanDefinition/{resource_id}")
        return _applied(await planner.draft_plan(parsed, status="draft", protocol=protocol))

    applies = "The CarePlan a protocol would produce; stores nothing"
    return [Entry("$generate", generate, ("CarePlan",), method="POST", permission=Permission("c"),
                  definition=GENERATE_DEFINITION, tag="operations",
                  documentation="Create the CarePlan for a scar assessment (idempotent per assessment)"),
            Entry("$apply", apply, ("PlanDefinition",), method="POST", permission=Permission("r", "CarePlan"),
                  definition=APPLY_DEFINITION, documentation=applies, tag="operations"),
            Entry("$apply", apply_instance, ("PlanDefinition",), method="POST", instance=True,
                  permission=Permission("r", "CarePlan"), definition=APPLY_DEFINITION, documentation=applies,
                  tag="operations")]


def _checked(planner: CarePlanner, parse: Callable[[Any], GenerateRequest], body: Any) -> GenerateRequest:
    """The request's limits first (counting costs little), then its R4 validation and parsing."""
    planner.limits.check_request(body)
    return parse(body)


def _applied(result: PlanResult) -> Response:
    """The plan alone, or with the plausibility warnings about its assessment in an OperationOutcome."""
    if not result.warnings:
        return FhirResponse(result.careplan)
    return FhirResponse({"resourceType": "Parameters", "parameter": [
        {"name": "return", "resource": result.careplan},
        {"name": "outcome", "resource": operation_outcome(result.warnings)}]})


def _already_generated(request: Request, stored: StoredResource, base: str) -> Response:
    """The plan an earlier submission stored: in full to a caller that may read plans, else only where it is."""
    access = current_access(request)
    if access is not None and access.allows("CarePlan", "r"):
        return write_response(request, stored, base=base, created=False)
    touched(request.scope).append(stored)  # recorded in the audit trail though its content is not returned
    outcome = operation_outcome([Issue(
        code="informational", severity="information",
        diagnostics=f"This assessment was already turned into CarePlan/{stored.id}; reading it needs the scope "
                    f"{required_scope('CarePlan', 'r')} (or its user/ form)")])
    return FhirResponse(outcome, headers=resource_headers(stored) | {
        "Location": f"{base}/CarePlan/{stored.id}/_history/{stored.version_id}"})


async def _save(ctx: ServiceContext, repository: PlanRepository, result: PlanResult,
                careplan_id: str) -> tuple[StoredResource, bool]:
    """Store the plan: on the event loop where it can be (PostgreSQL, a body site's first plan), else in a session
    in a worker thread. Returns (plan, created)."""
    if on_loop(ctx.loop_db):
        saved = await repository.save_on_loop(ctx.loop_db, result, careplan_id=careplan_id)
        if saved is not None:
            return saved

    def in_session() -> tuple[StoredResource, bool]:
        with ctx.session() as session:
            return repository.save(session, result, careplan_id=careplan_id)

    return await run_in_threadpool(in_session)


async def _existing(ctx: ServiceContext, repository: PlanRepository, subject: str, key: str) -> StoredResource | None:
    """The plan an earlier submission of this assessment stored: on the event loop where it can be (PostgreSQL),
    else in a worker thread."""
    if on_loop(ctx.loop_db):
        return await repository.existing_on_loop(ctx.loop_db, subject, key)

    def in_session() -> StoredResource | None:
        with ctx.session() as session:
            return repository.existing(session, subject, key)

    return await run_in_threadpool(in_session)
