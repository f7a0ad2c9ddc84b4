"""The rule for changing a stored CarePlan, under which it is updated (`PUT`) and patched (`PATCH`).

A generated plan is a clinical record: its activities, schedule and screening are
what the protocol produced for one assessment, so they are not edited here (a new
assessment makes a new plan, which revokes the old one). What a clinician does
change is the plan's **status** (draft -> active when it is approved, active ->
revoked when it is withdrawn, ...) and may add **notes**. Both interactions accept
exactly that (services.fhir.revisions runs them; `If-Match` on the current version
is required):

- `PUT` with the whole CarePlan (as read, `id` = URL id); elements other than `status`
  and `note` must be unchanged;
- `PATCH` with a JSON Patch (`application/json-patch+json`, RFC 6902) against the
  current version; the patched plan must meet the same rule.

`meta` belongs to the server: `versionId` and `lastUpdated` are set on every write, and
`security`, `tag`, `source` and `profile` stay what the plan was stored with. A request
may repeat them as read or leave them out; one that changes them is refused (422), so a
security label or provenance tag can never be forged along with a note.

A patient's body site has at most one active plan: activating a second one is refused
(409). A change writes a new version, and the store's plan hooks queue its delivery in
the same transaction: the EHR's copy is then updated with `If-Match` on the version the
EHR last returned (services/careplan/delivery). A request that changes nothing answers
200 with the current version and queues nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlmodel import Session, col

from services.careplan.tables import AssessmentPlan
from services.fhir.outcome import Conflict, FhirError, Issue, Unprocessable

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


class CarePlanChanges:
    """The CarePlan's update rule (services.fhir.revisions.UpdateRule)."""

    def revise(self, session: Session, current: dict[str, Any], proposed: dict[str, Any]) -> dict[str, Any]:
        """Status and notes from `proposed`, everything else (server-owned meta included) as stored."""
        check_change(current, proposed)
        return {**proposed, "meta": current.get("meta", {})}

    def refused(self, session: Session, resource_id: str) -> FhirError:
        """The one-active-plan index (tables.AssessmentPlan) refused an activation."""
        return Conflict(f"CarePlan/{_active_plan_of_site(session, resource_id)} is already active for this "
                        f"patient and body site; revoke or complete it before CarePlan/{resource_id} can become "
                        "active", code="business-rule")


def _active_plan_of_site(session: Session, plan_id: str) -> str | None:
    """The active plan of the patient and body site `plan_id` was made for."""
    row = session.scalars(select(AssessmentPlan).where(col(AssessmentPlan.careplan_id) == plan_id)).first()
    if row is None:
        return None
    return session.scalars(select(col(AssessmentPlan.careplan_id)).where(
        col(AssessmentPlan.subject) == row.subject, col(AssessmentPlan.body_site) == row.body_site,
        col(AssessmentPlan.active))).first()
