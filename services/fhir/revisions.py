"""Changes to a stored resource under its type's own rule: the write half of update and patch.

A service gives a resource type an `UpdateRule` when a stored version is more than a document a
client may replace (a generated CarePlan, say: only some elements may change, some belong to the
server). `revise` is then the one path of both interactions: it reads the current version, checks
`If-Match` against it, derives the proposed version (the PUT body, or the current version patched),
lets the rule refuse or amend it, validates it as R4 and stores it. A change that changes nothing
stores nothing and answers the current version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from services.fhir.outcome import BadRequest, FhirError, PreconditionFailed
from services.fhir.store import ResourceStore, StoredResource
from services.fhir.validation import r4_issues

Change = Callable[[dict[str, Any]], dict[str, Any]]
"""The proposed version from the current one: the body of a PUT, or the current version patched."""


class UpdateRule(Protocol):
    """A resource type's rule for changing what is stored; update and patch of the type go through it."""

    def revise(self, session: Session, current: dict[str, Any], proposed: dict[str, Any]) -> dict[str, Any]:
        """The version to store in place of `current`; raises FhirError to refuse the change."""
        ...

    def refused(self, session: Session, resource_id: str) -> FhirError:
        """The answer to a write a database constraint refused (the session is rolled back)."""
        ...


def revise(store: ResourceStore, session: Session, rule: UpdateRule, resource_type: str, resource_id: str,
           if_match: int, change: Change) -> tuple[StoredResource, bool]:
    """Store the version `change` makes of the current one, under `rule`, and commit; returns the version
    now current and whether it is new."""
    current = store.read(session, resource_type, resource_id)
    if current.version_id != if_match:
        raise PreconditionFailed(f"{resource_type}/{resource_id} is at version {current.version_id}, not {if_match}")
    before = current.parsed()
    proposed = change(before)
    if proposed.get("resourceType") != resource_type or proposed.get("id") != resource_id:
        raise BadRequest(f"The result must be this {resource_type} (resourceType and id unchanged)",
                         expression="id")
    proposed = rule.revise(session, before, proposed)
    if proposed == before:
        return current, False
    issues = r4_issues(proposed)
    if issues:
        raise BadRequest(issues[0].diagnostics, issues=issues)
    try:
        stored, _ = store.update(session, resource_type, resource_id, proposed, if_match=if_match)
        session.commit()
    except IntegrityError:
        session.rollback()
        raise rule.refused(session, resource_id) from None
    return stored, True
