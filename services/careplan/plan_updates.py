"""Status changes of a stored CarePlan: `PUT` and `PATCH` on `/fhir/CarePlan/{id}`.

A generated plan is a clinical record: its activities, schedule and screening are
what the protocol produced for one assessment, so they are not edited here (a new
assessment makes a new plan, which revokes the old one). What a clinician does
change is the plan's **status** (draft -> active when it is approved, active ->
revoked when it is withdrawn, ...) and may add **notes**. Both interactions accept
exactly that:

- `PUT` with the whole CarePlan (as read, `id` = URL id) and `If-Match` on its current
  version; elements other than `status` and `note` must be unchanged;
- `PATCH` with a JSON Patch (`application/json-patch+json`, RFC 6902) against the
  current version, `If-Match` required as well; the patched plan must meet the same rule.

`meta` belongs to the server: `versionId` and `lastUpdated` are set on every write, and
`security`, `tag`, `source` and `profile` stay what the plan was stored with. A request
may repeat them as read or leave them out; one that changes them is refused (422), so a
security label or provenance tag can never be forged along with a note.

A change writes a new version and, through the plan hooks, queues its delivery in
the same transaction: the EHR's copy is then updated with `If-Match` on the version
the EHR last returned (services/careplan/delivery). A request that changes nothing
answers 200 with the current version and queues nothing.
"""

from __future__ import annotations

from typing import Any

import jsonpatch
from fastapi import APIRouter, Request
from jsonpointer import JsonPointerException
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from services.careplan.generate import PlanHook
from services.careplan.tables import AssessmentPlan
from services.fhir.conditional import version_from_etag
from services.fhir.jsonio import loads, media_type, read_resource
from services.fhir.outcome import BadRequest, Conflict, Issue, PreconditionFailed, Unprocessable, UnsupportedMediaType
from services.fhir.rest import fhir_base, write_response
from services.fhir.service import ContextDep, SessionDep
from services.fhir.store import ResourceStore, StoredResource
from services.fhir.validation import r4_issues

JSON_PATCH = "application/json-patch+json"
MUTABLE = frozenset({"status", "note"})
SERVER_SET_META = frozenset({"versionId", "lastUpdated"})
TRANSITIONS: dict[str, frozenset[str]] = {
    "draft": frozenset({"active", "revoked", "entered-in-error"}),
    "active": frozenset({"on-hold", "revoked", "completed", "entered-in-error"}),
    "on-hold": frozenset({"active", "revoked", "entered-in-error"}),
}
"""Status changes a clinician may make (R4 request-status); revoked, completed and entered-in-error are final."""


def check_change(current: dict[str, Any], proposed: dict[str, Any]) -> None:
    """422 unless `proposed` differs from `current` in status (an allowed transition) and notes only."""
    keys = (set(current) | set(proposed)) - MUTABLE - {"meta"}
    changed = sorted(k for k in keys if current.get(k) != proposed.get(k))
    changed += sorted(f"meta.{k}" for k in _meta_changes(current, proposed))
    if changed:
        raise Unprocessable(
            "Only status and note can change on a stored CarePlan; submit a new assessment for a new plan "
            f"(changed: {', '.join(changed)})",
            issues=[Issue(code="business-rule", diagnostics=f"CarePlan.{key} cannot be changed",
                          expression=(f"CarePlan.{key}",)) for key in changed])
    old, new = current.get("status"), proposed.get("status")
    if old != new and (not isinstance(new, str) or new not in TRANSITIONS.get(str(old), frozenset())):
        allowed = ", ".join(sorted(TRANSITIONS.get(str(old), frozenset()))) or "none (final)"
        raise Unprocessable(f"A {old} CarePlan cannot become {new}; allowed: {allowed}",
                            expression="CarePlan.status", code="business-rule")


def _meta_changes(current: dict[str, Any], proposed: dict[str, Any]) -> list[str]:
    """The server-owned `meta` elements `proposed` gives a value other than the stored one (absent is kept)."""
    old, new = current.get("meta") or {}, proposed.get("meta")
    if new is None:
        return []
    if not isinstance(new, dict):
        return ["meta"]
    return [k for k in new if k not in SERVER_SET_META and new[k] != old.get(k)]


# ----------------------------------------------------------------- JSON Patch


def apply_json_patch(document: dict[str, Any], operations: Any) -> dict[str, Any]:
    """RFC 6902 on a copy of `document` (the `jsonpatch` library; array indices are RFC 6901's, never negative).

    A malformed patch is 400, a path that does not resolve 422, a failed `test` 412."""
    if not isinstance(operations, list) or not all(
            isinstance(op, dict) and isinstance(op.get("op"), str) and isinstance(op.get("path"), str)
            for op in operations):
        raise BadRequest("A JSON Patch is an array of operations, each with a string 'op' and 'path'",
                         code="structure")
    try:
        patched = jsonpatch.JsonPatch(operations).apply(document)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise PreconditionFailed(f"JSON Patch test failed: {exc}", code="processing") from None
    except jsonpatch.InvalidJsonPatch as exc:
        raise BadRequest(f"Invalid JSON Patch: {exc}", code="structure") from None
    except (jsonpatch.JsonPatchException, JsonPointerException) as exc:
        raise Unprocessable(f"JSON Patch cannot be applied: {exc}", code="processing") from None
    if not isinstance(patched, dict):  # a whole-document replace with something else
        raise Unprocessable("The patched document must still be a CarePlan", code="processing")
    return patched


# --------------------------------------------------------------------- routes


def _active_plan_of_site(session: Session, plan_id: str) -> str | None:
    """The active plan of the patient and body site `plan_id` was made for."""
    row = session.scalars(select(AssessmentPlan).where(AssessmentPlan.careplan_id == plan_id)).first()
    if row is None:
        return None
    return session.scalars(select(AssessmentPlan.careplan_id).where(
        AssessmentPlan.subject == row.subject, AssessmentPlan.body_site == row.body_site,
        AssessmentPlan.active)).first()


def plan_updates_router(store: ResourceStore, hooks: list[PlanHook]) -> APIRouter:
    router = APIRouter(prefix="/fhir", tags=["resources"])

    def save(session: Session, plan_id: str, if_match: int, change: Any) -> tuple[StoredResource, bool]:
        """Apply `change(current) -> proposed`; store a new version and queue its delivery unless nothing changed."""
        current = store.read(session, "CarePlan", plan_id)
        if current.version_id != if_match:
            raise PreconditionFailed(f"CarePlan/{plan_id} is at version {current.version_id}, not {if_match}")
        before = current.parsed()
        proposed = change(before)
        if proposed.get("resourceType") != "CarePlan" or proposed.get("id") != plan_id:
            raise BadRequest("The result must be this CarePlan (resourceType and id unchanged)", expression="id")
        check_change(before, proposed)
        proposed = {**proposed, "meta": before.get("meta", {})}
        if proposed == before:
            return current, False
        issues = r4_issues(proposed)
        if issues:
            raise BadRequest(issues[0].diagnostics, issues=issues)
        try:
            stored, _ = store.update(session, "CarePlan", plan_id, proposed, if_match=if_match)
            for hook in hooks:
                hook(session, stored, current)
            session.commit()
        except IntegrityError:  # the one-active-plan index (tables.AssessmentPlan)
            session.rollback()
            raise Conflict(f"CarePlan/{_active_plan_of_site(session, plan_id)} is already active for this patient "
                           f"and body site; revoke or complete it before CarePlan/{plan_id} can become active",
                           code="business-rule") from None
        return stored, True

    def required_if_match(request: Request) -> int:
        if_match = version_from_etag(request.headers.get("if-match"))
        if if_match is None:
            raise BadRequest("Changing a CarePlan requires If-Match with its current version, e.g. W/\"2\"",
                             expression="If-Match", code="required")
        return if_match

    @router.put("/CarePlan/{plan_id}", name="update-careplan")
    async def update_careplan(plan_id: str, request: Request, session: SessionDep, ctx: ContextDep) -> Response:
        """Change a plan's status (and notes); the change is delivered to the EHR."""
        if_match = required_if_match(request)
        resource = await read_resource(request, expected_type="CarePlan")
        if resource.get("id") != plan_id:
            raise BadRequest(f"The body's id '{resource.get('id')}' does not match the URL id '{plan_id}'",
                             expression="CarePlan.id")
        stored, _ = await run_in_threadpool(save, session, plan_id, if_match, lambda _current: resource)
        return write_response(request, stored, base=fhir_base(request, ctx.settings.BASE_URL), created=False)

    @router.patch("/CarePlan/{plan_id}", name="patch-careplan")
    async def patch_careplan(plan_id: str, request: Request, session: SessionDep, ctx: ContextDep) -> Response:
        """JSON Patch a plan's status (and notes); the change is delivered to the EHR."""
        if_match = required_if_match(request)
        if media_type(request) != JSON_PATCH:
            raise UnsupportedMediaType(f"PATCH takes {JSON_PATCH} (RFC 6902)")
        operations = loads(await request.body())
        stored, _ = await run_in_threadpool(save, session, plan_id, if_match,
                                            lambda current: apply_json_patch(current, operations))
        return write_response(request, stored, base=fhir_base(request, ctx.settings.BASE_URL), created=False)

    return router
