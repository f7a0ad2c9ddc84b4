"""What the EHR's data says about the patient, in the terms the catalog's screening rules read.

The screening rules are FHIRPath over a scar assessment (`pregnant`,
`breastfeeding`, `allergy`, `declined-modality` answers). In the EHR the same
facts live in Observations and AllergyIntolerances, so `screening_assessment`
gives the rules an assessment: the patient's latest one if there is one, with
`pregnant` and `breastfeeding` answered from the latest status Observations when
they say something. AllergyIntolerances reach the rules as they do for
`$generate`.

Status Observations are read by the codes US Core and IPS use:

- pregnancy status, LOINC 82810-3; values LOINC LA15173-0 Pregnant / LA26683-5 Not
  pregnant (IPS value set pregnancy-status-uv-ips) and SNOMED CT 77386006 Pregnancy /
  60001007 Not pregnant (US Core pregnancy status profile, IPS 2.0 value set);
- breastfeeding status, LOINC 63895-7; values LOINC LA29252-6 Currently
  breastfeeding / LA29253-4 Not currently breastfeeding.

Any other value (LA4489-6 Unknown, for instance) says nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from services.careplan.intake import Assessment

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
PREGNANCY_STATUS = "82810-3"
BREASTFEEDING_STATUS = "63895-7"
STATUS_VALUES: dict[str, dict[tuple[str, str], bool]] = {
    "pregnant": {(LOINC, "LA15173-0"): True, (LOINC, "LA26683-5"): False,
                 (SNOMED, "77386006"): True, (SNOMED, "60001007"): False},
    "breastfeeding": {(LOINC, "LA29252-6"): True, (LOINC, "LA29253-4"): False},
}
USABLE_STATUS = frozenset({"final", "amended", "corrected"})
ASSESSMENT_STATUS = frozenset({"completed", "amended"})


def status_answer(observations: list[dict[str, Any]], link_id: str) -> bool | None:
    """What the latest usable status Observation says (True / False), None when none says anything."""
    usable = [o for o in observations if o.get("status") in USABLE_STATUS]
    for observation in sorted(usable, key=_when, reverse=True):
        for coding in (observation.get("valueCodeableConcept") or {}).get("coding", []):
            found = STATUS_VALUES[link_id].get((coding.get("system", ""), coding.get("code", "")))
            if found is not None:
                return found
    return None


def latest_assessment(responses: list[dict[str, Any]], questionnaire: str) -> dict[str, Any] | None:
    """The patient's most recent completed answer to the scar assessment Questionnaire."""
    ours = [r for r in responses if r.get("status") in ASSESSMENT_STATUS
            and str(r.get("questionnaire", "")).split("|", 1)[0] == questionnaire]
    return max(ours, key=lambda r: str(r.get("authored", "")), default=None)


@dataclass(frozen=True)
class Status:
    pregnant: bool | None
    breastfeeding: bool | None


def with_status(response: dict[str, Any], status: Status) -> dict[str, Any]:
    """A copy of the assessment whose `pregnant` / `breastfeeding` answers say what the Observations say."""
    response = copy.deepcopy(response)
    for link_id, value in (("pregnant", status.pregnant), ("breastfeeding", status.breastfeeding)):
        if value is None:
            continue
        items = [i for i in response.get("item", []) if i.get("linkId") != link_id]
        response["item"] = [*items, {"linkId": link_id, "answer": [{"valueBoolean": value}]}]
    return response


def screening_assessment(base: dict[str, Any] | None, status: Status, subject: str) -> Assessment:
    """The assessment the screening rules read for an order: the latest one, or only what the EHR's data says."""
    response = base or {"resourceType": "QuestionnaireResponse", "status": "completed",
                        "subject": {"reference": subject}, "item": []}
    response = with_status(response, status)
    answers: dict[str, list[Any]] = {}
    for item in response.get("item", []):
        values = [v for answer in item.get("answer", []) for k, v in answer.items() if k.startswith("value")]
        answers.setdefault(item.get("linkId", ""), []).extend(values)
    return Assessment(response=response, subject=subject, answers=answers)


def _when(observation: dict[str, Any]) -> str:
    period = observation.get("effectivePeriod") or {}
    return str(observation.get("effectiveDateTime") or observation.get("effectiveInstant") or period.get("end")
               or period.get("start") or observation.get("issued") or "")
