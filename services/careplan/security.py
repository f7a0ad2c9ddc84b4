"""Who may use the care-plan service, and what its audit trail records (README.md#security).

CarePlans, assessments, delivery Tasks and the AuditEvents that name them are
patient data: a `patient/` scope reaches only its own patient's, every access is
audited, and nothing is cached downstream. The operations need:

    CarePlan/$generate          CarePlan.c    (stores a plan)
    PlanDefinition/$apply       CarePlan.r    (computes a plan, stores nothing)
    Task/{id}/$retry            Task.u        (re-queues a delivery)
    $ehr-capabilities           Task.r        (the delivery's request plan; no patient data, but no patient's either)
    Subscription/{id}/$status   Subscription.r
    Subscription/{id}/$events   Subscription.r  (full-resource content: read access to what it carries)

Subscriptions count as patient data: a `patient/` scope may create, read, search and
delete them, and they stay limited to the token's patient (see subscriptions/resource.py).
    {type}/$validate            {type}.c
"""

from __future__ import annotations

from services.careplan.searchparams import SEARCH_PARAMS
from services.careplan.subscriptions.resource import subscription_patients
from services.fhir.access import AccessPolicy
from services.fhir.audit import AuditTrail
from services.fhir.compartment import PatientCompartment
from services.fhir.store import ResourceStore

PATIENT_DATA = frozenset({"CarePlan", "QuestionnaireResponse", "Task", "AuditEvent", "Subscription"})
PATIENT_MANAGED = frozenset({"Subscription"})
"""A patient/ scope may also create, delete and run operations on these; their handlers keep them to its patient."""
OPERATIONS = {
    ("CarePlan", "generate"): ("*", "c"),
    ("PlanDefinition", "apply"): ("CarePlan", "r"),
    ("Task", "retry"): ("*", "u"),
    ("*", "ehr-capabilities"): ("Task", "r"),
    ("*", "validate"): ("*", "c"),
    ("Subscription", "status"): ("Subscription", "r"),
    ("Subscription", "events"): ("Subscription", "r"),
}


def patient_compartment() -> PatientCompartment:
    return PatientCompartment(PATIENT_DATA, SEARCH_PARAMS, patients_of={"Subscription": subscription_patients})


def access_policy(compartment: PatientCompartment) -> AccessPolicy:
    return AccessPolicy(operations=OPERATIONS, patient_data=PATIENT_DATA,
                        patient_searchable=compartment.searchable | PATIENT_MANAGED, patient_managed=PATIENT_MANAGED)


def audit_trail(store: ResourceStore, compartment: PatientCompartment) -> AuditTrail:
    return AuditTrail(store, service="careplan", compartment=compartment)
