"""Who may use the care-plan service, and what its audit trail records (README.md#security).

CarePlans, assessments, delivery Tasks and the AuditEvents that name them are
patient data: a `patient/` scope reaches only its own patient's, every access is
audited, and nothing is cached downstream. The operations need what the interaction
table says of them (`$generate` CarePlan.c, `$apply` CarePlan.r, `$retry` Task.u, ...).

Subscriptions count as patient data: a `patient/` scope may create, read, search and
delete them, and they stay limited to the token's patient (see subscriptions/resource.py).
"""

from __future__ import annotations

from services.careplan.searchparams import SEARCH_PARAMS
from services.careplan.subscriptions.resource import subscription_patients
from services.fhir.access import AccessPolicy
from services.fhir.audit import AuditTrail
from services.fhir.compartment import PatientCompartment
from services.fhir.interaction_table import InteractionTable
from services.fhir.store import ResourceStore

PATIENT_DATA = frozenset({"CarePlan", "QuestionnaireResponse", "Task", "AuditEvent", "Subscription"})
PATIENT_MANAGED = frozenset({"Subscription"})
"""A patient/ scope may also create, delete and run operations on these; their handlers keep them to its patient."""


def patient_compartment() -> PatientCompartment:
    return PatientCompartment(PATIENT_DATA, SEARCH_PARAMS, patients_of={"Subscription": subscription_patients})


def access_policy(compartment: PatientCompartment, table: InteractionTable) -> AccessPolicy:
    return AccessPolicy(operations=table.operation_rules(), patient_data=PATIENT_DATA,
                        patient_searchable=compartment.searchable | PATIENT_MANAGED, patient_managed=PATIENT_MANAGED)


def audit_trail(store: ResourceStore, compartment: PatientCompartment) -> AuditTrail:
    return AuditTrail(store, service="careplan", compartment=compartment)
