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
    "QuestionnaireResponse": {
        "subject": SearchParamDef("subject", "reference", "QuestionnaireResponse.subject",
                                  "Who the assessment is about"),
        "patient": SearchParamDef("patient", "reference",
                                  "QuestionnaireResponse.subject.where(reference.startsWith('Patient/'))",
                                  "The patient the assessment is about"),
    },
    # The audit trail (services/fhir/audit.py): references and codes only, searchable by auditors.
    "AuditEvent": {
        "entity": SearchParamDef("entity", "reference", "AuditEvent.entity.what",
                                 "A resource the access touched, e.g. CarePlan/123 or Patient/456"),
        "agent": SearchParamDef("agent", "reference",
                                "AuditEvent.agent.who.reference | AuditEvent.agent.who.identifier.value",
                                "Who acted: the token's subject or client id, or its fhirUser reference"),
        "date": SearchParamDef("date", "date", "AuditEvent.recorded", "When the access was recorded"),
        "type": SearchParamDef("type", "token", "AuditEvent.type", "Type of event (rest)"),
        "subtype": SearchParamDef("subtype", "token", "AuditEvent.subtype",
                                  "The RESTful interaction (read, search-type, operation, ...)"),
        "action": SearchParamDef("action", "token", "AuditEvent.action", "C | R | U | D | E"),
        "outcome": SearchParamDef("outcome", "token", "AuditEvent.outcome", "0 | 4 | 8 | 12"),
        "patient": SearchParamDef("patient", "reference",
                                  "AuditEvent.entity.what.where(reference.startsWith('Patient/'))",
                                  "The patient whose data was accessed"),
    },
}

SORTABLE = ("date", "status")
