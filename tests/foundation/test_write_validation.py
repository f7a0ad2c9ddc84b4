"""What a service stores is R4: write-time validation catches what the R4B models alone would let through."""

from __future__ import annotations

import pytest

from services.fhir.validation import r4_issues


@pytest.mark.parametrize("resource,expression", [
    ({"resourceType": "ActivityDefinition", "status": "active", "kind": "Procedure"}, "ActivityDefinition.kind"),
    ({"resourceType": "CarePlan", "status": "bogus", "intent": "plan", "subject": {"reference": "Patient/1"}},
     "CarePlan.status"),
    ({"resourceType": "PlanDefinition", "status": "active", "subjectCanonical": "https://x.org/y"},
     "PlanDefinition.subjectCanonical"),
    ({"resourceType": "Questionnaire", "status": "active", "item": [{"linkId": "a", "type": "question"}]},
     "Questionnaire.item[0].type"),
    ({"resourceType": "ActivityDefinition", "status": "active", "timingTiming": {"event": ["2025-03-03T10:00:00"]}},
     "ActivityDefinition.timingTiming.event[0]"),
    ({"resourceType": "ActivityDefinition", "status": "active", "colour": "blue"}, "ActivityDefinition.colour"),
    ({"resourceType": "Ingredient", "status": "active"}, "resourceType"),
])
def test_invalid_r4_is_reported_with_its_expression(resource, expression):
    issues = r4_issues(resource)
    assert issues, resource
    assert expression in {e for issue in issues for e in issue.expression}


def test_valid_r4_passes():
    assert r4_issues({"resourceType": "ActivityDefinition", "status": "active", "kind": "ServiceRequest",
                      "timingTiming": {"repeat": {"count": 10, "countMax": 15, "frequency": 2, "period": 1,
                                                  "periodUnit": "wk"}}}) == []
