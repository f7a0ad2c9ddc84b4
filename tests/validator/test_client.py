"""The Python client: accepted inputs, messages, the round-trip comparison and missing-toolchain failures.

Why: tests all over the suite call ``assert_r4``; its messages and failure modes must be clear.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fhir.resources.R4B.careplan import CarePlan

from tests.support import r4
from tests.support.r4 import R4Validator, R4ValidatorUnavailable, roundtrip_issues
from tests.validator.helpers import example


def test_accepts_dict_text_bytes_and_r4b_model(r4_validator) -> None:
    plan = example("CarePlan/cp1")
    for form in (plan, json.dumps(plan), json.dumps(plan).encode(), CarePlan.model_validate(plan)):
        assert r4_validator.errors(form) == []


def test_assert_valid_lists_every_problem(assert_r4) -> None:
    plan = example("CarePlan/cp1")
    plan["status"] = "bogus"
    plan["subjectCanonical"] = "x"
    plan["created"] = "2025-02-20T10:00:00"
    with pytest.raises(AssertionError) as failure:
        assert_r4(plan)
    message = str(failure.value)
    assert message.startswith("CarePlan is not valid FHIR R4:")
    assert "[bindings] CarePlan.status" in message
    assert "[medplum] CarePlan.subjectCanonical" in message
    assert "[roundtrip] CarePlan.created" in message


def test_roundtrip_ignores_number_and_time_spelling() -> None:
    """2.50 vs 2.5, +00:00 vs Z and .100 vs .100000 are the same values, not data changes."""
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "scar depth"},
        "valueQuantity": {"value": 2.50, "unit": "mm"},
        "effectiveInstant": "2025-02-20T09:00:07.100+00:00",
    }
    assert roundtrip_issues(observation) == []


def test_roundtrip_reports_first_dropped_path() -> None:
    medication = example("Medication/madecassol-cream")
    medication["fhir_comments"] = ["left over from a template"]
    (issue,) = roundtrip_issues(medication)
    assert (issue.check, issue.path) == ("roundtrip", "Medication.fhir_comments")
    assert "dropped" in issue.message


def test_roundtrip_reports_unknown_resource_type() -> None:
    (issue,) = roundtrip_issues({"resourceType": "NoSuchThing"})
    assert "no fhir.resources.R4B model" in issue.message


def test_usable_outside_pytest_as_context_manager() -> None:
    with R4Validator() as validator:
        assert validator.errors(example("Provenance/prov1")) == []


def test_missing_node_modules_names_make_deps(tmp_path: Path) -> None:
    with pytest.raises(R4ValidatorUnavailable, match="make deps"):
        R4Validator(validator_dir=tmp_path).start()


def test_missing_node_names_make_deps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(r4.shutil, "which", lambda _name: None)
    with pytest.raises(R4ValidatorUnavailable, match="make deps"):
        R4Validator().start()
