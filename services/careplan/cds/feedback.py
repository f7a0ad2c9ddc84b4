"""CDS Hooks 2.0 feedback (https://cds-hooks.hl7.org/2.0/#feedback): what clinicians did with our cards.

Each feedback item becomes one AuditEvent in the service's audit trail (the same
store and agent rules as every other access): the card (and accepted suggestions)
by uuid, the outcome, when the clinician acted, and the override reason's code.
The clinician's free-text `userComment` is not stored: the audit trail holds
codes and references only, and a comment may name the patient.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from services.fhir.access import Principal
from services.fhir.audit import AuditTrail
from services.fhir.outcome import BadRequest

FEEDBACK_TYPE = {"system": "https://fhir.cicatrix.org/CodeSystem/cds-hooks", "code": "feedback",
                 "display": "CDS Hooks feedback"}
OUTCOMES = {"accepted": "Suggestion accepted", "overridden": "Card overridden"}


def feedback_events(body: Any, service_id: str, trail: AuditTrail, principal: Principal, client_host: str | None,
                     max_items: int) -> list[dict[str, Any]]:
    """One AuditEvent per feedback item; 400 naming the first wrong field."""
    items = body.get("feedback") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise BadRequest("Feedback is an object with a non-empty 'feedback' array", expression="feedback")
    if len(items) > max_items:
        raise BadRequest(f"At most {max_items} feedback items per call", expression="feedback", code="too-costly")
    return [_event(item, f"feedback[{i}]", service_id, trail, principal, client_host) for i, item in enumerate(items)]


def _event(item: Any, where: str, service_id: str, trail: AuditTrail, principal: Principal,
           client_host: str | None) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise BadRequest(f"{where} must be an object", expression=where)
    card = _uuid(item.get("card"), f"{where}.card")
    outcome = item.get("outcome")
    if outcome not in OUTCOMES:
        raise BadRequest(f"{where}.outcome must be accepted or overridden", expression=f"{where}.outcome")
    when = item.get("outcomeTimestamp")
    try:
        datetime.fromisoformat(str(when).replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{where}.outcomeTimestamp must be an ISO 8601 time", expression=f"{where}.outcomeTimestamp",
                         code="required") from None
    details = [{"type": "service", "valueString": service_id}, {"type": "outcome", "valueString": outcome},
               {"type": "outcomeTimestamp", "valueString": str(when)}]
    entities = [{"what": {"identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{card}"}},
                 "name": "card", "detail": details}]
    accepted = item.get("acceptedSuggestions")
    if outcome == "accepted":
        if not isinstance(accepted, list) or not accepted or len(accepted) > 20:
            raise BadRequest(f"{where}.acceptedSuggestions must list the accepted suggestions",
                             expression=f"{where}.acceptedSuggestions", code="required")
        for j, suggestion in enumerate(accepted):
            found = _uuid(suggestion.get("id") if isinstance(suggestion, dict) else None,
                          f"{where}.acceptedSuggestions[{j}].id")
            entities.append({"what": {"identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{found}"}},
                             "name": "accepted suggestion"})
    reason = (item.get("overrideReason") or {}).get("reason") if outcome == "overridden" else None
    if reason is not None:
        if not isinstance(reason, dict) or not isinstance(reason.get("code"), str) \
                or not isinstance(reason.get("system"), str):
            raise BadRequest(f"{where}.overrideReason.reason must be a Coding with system and code",
                             expression=f"{where}.overrideReason.reason")
        details.append({"type": "overrideReason", "valueString": f"{reason['system'][:200]}|{reason['code'][:64]}"})
    return trail.recorded_event(
        type=FEEDBACK_TYPE,
        subtype=[{"system": FEEDBACK_TYPE["system"], "code": outcome, "display": OUTCOMES[outcome]}],
        action="E", principal=principal, client_host=client_host, outcome="0",
        outcome_desc=f"{OUTCOMES[outcome]} ({service_id})", entities=entities)


def _uuid(value: Any, where: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise BadRequest(f"{where} must be the uuid from the card", expression=where) from None
