"""Edges strict typing brought to light: values that are absent or of another JSON type than expected."""

from __future__ import annotations

import pytest

from services.careplan.intake import parse_generate
from services.careplan.planning import Preparation
from services.fhir.outcome import BadRequest


def test_preparation_name_skips_codings_without_a_display():
    medication = {"resourceType": "Medication", "id": "silicone",
                  "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1"},
                                      {"system": "http://snomed.info/sct", "code": "2", "display": "Silicone gel"}]}}
    assert Preparation(medication=medication, reference="Medication/silicone").name == "Silicone gel"


def test_preparation_name_falls_back_to_the_reference_when_no_coding_has_a_display():
    medication = {"resourceType": "Medication", "id": "gel", "code": {"coding": [{"code": "1"}]}}
    assert Preparation(medication=medication, reference="Medication/gel").name == "Medication/gel"


@pytest.mark.parametrize("start", [{"valueDateTime": 20250101}, {"valueDateTime": ["2025-01-01"]},
                                   {"valueString": 7}])
def test_a_start_that_is_not_a_string_is_400(start):
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueReference": {"reference": "Patient/p1"}}, {"name": "start", **start}]}
    with pytest.raises(BadRequest):
        parse_generate(body)


def test_a_start_datetime_counts_by_its_day():
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueReference": {"reference": "Patient/p1"}},
        {"name": "assessment", "resource": {"resourceType": "QuestionnaireResponse", "status": "completed"}},
        {"name": "start", "valueDateTime": "2025-03-04T09:00:00+01:00"}]}
    assert parse_generate(body).start.isoformat() == "2025-03-04"
