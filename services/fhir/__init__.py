"""FHIR R4 REST plumbing shared by the catalog and care-plan services.

Neither service re-implements FHIR REST rules: media types, OperationOutcome
errors, versioned storage, search, paging and the CapabilityStatement live here,
so that a route handler reads like the interaction it serves.
"""

FHIR_VERSION = "4.0.1"
FHIR_JSON = "application/fhir+json"
FHIR_JSON_UTF8 = "application/fhir+json; charset=utf-8"
