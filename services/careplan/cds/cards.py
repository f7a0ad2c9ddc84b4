"""CDS Hooks 2.0 cards (https://cds-hooks.hl7.org/2.0/#card-attributes) as the Cicatrix services write them.

Every card and suggestion carries a `uuid` so the EHR can send feedback about
it; a card with suggestions says how many may be taken (`at-most-one`). Order
cards offer removing the order and the reasons a clinician may give for keeping
it (`overrideReasons`, codes the catalog publishes in CodeSystem cds-hooks).
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

Indicator = Literal["info", "warning", "critical"]

SOURCE = {"label": "Cicatrix scar care", "topic": {"system": "https://fhir.cicatrix.org/CodeSystem/scar-care",
                                                     "code": "scar-therapy-plan", "display": "Scar therapy plan"}}
OVERRIDE_REASON_SYSTEM = "https://fhir.cicatrix.org/CodeSystem/cds-hooks"
"""Published by the catalog with the ValueSet cds-override-reason."""
OVERRIDE_REASONS = [
    {"system": OVERRIDE_REASON_SYSTEM, "code": "status-outdated",
     "display": "The patient's recorded status is out of date"},
    {"system": OVERRIDE_REASON_SYSTEM, "code": "benefit-outweighs-risk",
     "display": "Benefit outweighs the risk for this patient"},
    {"system": OVERRIDE_REASON_SYSTEM, "code": "discussed-with-patient",
     "display": "Risk discussed with the patient, who accepts it"},
]
SEVERITY_INDICATOR: dict[str, Indicator] = {"high": "critical", "moderate": "warning", "low": "info"}
"""DetectedIssue.severity of a catalog contraindication -> card indicator."""
SUMMARY_LIMIT = 140


def card(summary: str, indicator: Indicator, *, detail: str | None = None,
         suggestions: list[dict[str, Any]] | None = None, override: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = {"uuid": str(uuid.uuid4()), "summary": _one_line(summary), "indicator": indicator,
                              "source": SOURCE}
    if detail:
        result["detail"] = detail
    if suggestions:
        result["suggestions"] = suggestions
        result["selectionBehavior"] = "at-most-one"
    if override:
        result["overrideReasons"] = OVERRIDE_REASONS
    return result


def suggestion(label: str, *actions: dict[str, Any], recommended: bool = True) -> dict[str, Any]:
    return {"label": label, "uuid": str(uuid.uuid4()), "isRecommended": recommended, "actions": list(actions)}


def create_action(description: str, resource: dict[str, Any]) -> dict[str, Any]:
    return {"type": "create", "description": description, "resource": resource}


def delete_action(description: str, resource_id: str) -> dict[str, Any]:
    return {"type": "delete", "description": description, "resourceId": resource_id}


def unchecked_card(what: list[str]) -> dict[str, Any]:
    """Says which data the EHR neither sent nor let us read, so the clinician knows what was not screened."""
    names = ", ".join(what)
    return card(f"Not checked: {names}", "info",
                detail=f"The EHR sent no {names} and no FHIR server access to read it, so Cicatrix could not "
                       "screen against it. Check it before going ahead.")


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) < SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 2].rstrip() + "…"
