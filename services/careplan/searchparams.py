"""Search parameters of the resources the care-plan service stores (R4 names and expressions)."""

from __future__ import annotations

from services.fhir.searchparams import SearchParamDef

SEARCH_PARAMS: dict[str, dict[str, SearchParamDef]] = {
    "CarePlan": {
        "subject": SearchParamDef("subject", "reference", "CarePlan.subject", "Who the plan is for"),
        "patient": SearchParamDef("patient", "reference", "CarePlan.subject.where(reference.startsWith('Patient/'))",
                                  "The patient the plan is for"),
        "status": SearchParamDef("status", "token", "CarePlan.status", "draft | active | revoked | ..."),
        "identifier": SearchParamDef("identifier", "token", "CarePlan.identifier", "Business identifier"),
        "date": SearchParamDef("date", "date", "CarePlan.period", "Time period the plan covers"),
        "instantiates-canonical": SearchParamDef("instantiates-canonical", "reference",
                                                 "CarePlan.instantiatesCanonical", "The protocol applied"),
        "replaces": SearchParamDef("replaces", "reference", "CarePlan.replaces", "The plan this one replaces"),
    },
}

SORTABLE = ("date", "status")
