"""The CDS services this care-plan service offers, as `GET /cds-services` lists them (CDS Hooks 2.0 Discovery).

Each service names its hook and the prefetch templates it wants; the templates
use only what the specification recommends (reads, `patient=` references, token
equality, `_sort` and `_count`), so any EHR can satisfy them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.careplan.cds.patient import BREASTFEEDING_STATUS, LOINC, PREGNANCY_STATUS

PATIENT = "Patient/{{context.patientId}}"
"""References searched as Type/id: every server matches that form, not all match a bare id."""
ASSESSMENTS_SEEN = 20
"""Assessments read to find the latest scar assessment (servers differ in matching versioned canonicals, so
the Questionnaire is checked here rather than in the query)."""


def prefetch_templates() -> dict[str, str]:
    """The patient data both services read; keys are what the cards name when data is missing."""
    return {
        "assessment": f"QuestionnaireResponse?patient={PATIENT}&status=completed,amended&_sort=-authored"
                      f"&_count={ASSESSMENTS_SEEN}",
        "carePlans": f"CarePlan?patient={PATIENT}&status=active",
        "allergies": f"AllergyIntolerance?patient={PATIENT}&clinical-status=active",
        "pregnancy": f"Observation?patient={PATIENT}&code={LOINC}|{PREGNANCY_STATUS}&_sort=-date&_count=1",
        "breastfeeding": f"Observation?patient={PATIENT}&code={LOINC}|{BREASTFEEDING_STATUS}&_sort=-date&_count=1",
    }


PREFETCH_NAMES = {"assessment": "scar assessment", "carePlans": "active care plans", "allergies": "allergies",
                  "pregnancy": "pregnancy status", "breastfeeding": "breastfeeding status"}


@dataclass(frozen=True)
class CdsService:
    id: str
    hook: str
    title: str
    description: str
    prefetch_keys: tuple[str, ...] = tuple(PREFETCH_NAMES)
    """Both services read the same patient data: the plan is screened like an order."""

    def discovery(self, templates: dict[str, str]) -> dict[str, Any]:
        return {"hook": self.hook, "title": self.title, "description": self.description, "id": self.id,
                "prefetch": {key: templates[key] for key in self.prefetch_keys}}


SCAR_PLAN = CdsService(
    id="scar-plan", hook="patient-view", title="Scar treatment plan",
    description="When a patient's chart opens: the next sessions of their active scar treatment plan, or, for a "
                "scar assessment without a plan, the screened and scheduled CarePlan Cicatrix proposes (as a draft "
                "to create).",
)
ORDER_SAFETY = CdsService(
    id="scar-order-safety", hook="order-sign", title="Scar-care order safety",
    description="Screens scar-care orders being signed with the catalog's own rules: retinoids in pregnancy or "
                "breastfeeding (critical), preparations with an ingredient the patient is allergic to, declined "
                "modalities, and procedures that clash with a scheduled session of the active plan (warnings).",
)
ORDER_SAFETY_SELECT = CdsService(
    id="scar-order-safety-select", hook="order-select", title="Scar-care order safety (while ordering)",
    description="The scar-care order screening of scar-order-safety, on the orders the clinician has just "
                "selected, before signing.")
SERVICES = {service.id: service for service in (SCAR_PLAN, ORDER_SAFETY, ORDER_SAFETY_SELECT)}
