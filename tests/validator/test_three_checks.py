"""Each of the three checks catches a class of invalid R4 that the other two let through.

Why: the validator is only worth three checks if none is redundant. Each test below takes a valid
reference example, breaks it in one way, and asserts exactly which check reports it.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.validator.helpers import example


def _only(by_check, resource: dict[str, Any], check: str, fragment: str) -> None:
    found = by_check(resource)
    assert found[check], f"{check} should reject the resource; all findings: {found}"
    assert any(fragment in message for message in found[check]), found[check]
    others = {name: messages for name, messages in found.items() if name != check}
    assert others == {name: [] for name in others}, f"only {check} should fire: {found}"


# -- (a) Medplum only: structure the R4B models accept --------------------------------------------------


def test_medplum_alone_rejects_r4b_only_subject_canonical(by_check) -> None:
    """R4B added PlanDefinition.subjectCanonical; it is not an R4 element."""
    plan = example("PlanDefinition/atrophic-scar-protocol")
    plan["subjectCanonical"] = "https://example.org/fhir/StructureDefinition/scar-patient"
    _only(by_check, plan, "medplum", 'subjectCanonical: Invalid additional property "subjectCanonical"')


def test_medplum_alone_rejects_cpl_3_reference_and_detail(by_check) -> None:
    """Invariant cpl-3: an activity has a reference or a detail, not both (the models check no invariants)."""
    plan = example("CarePlan/cp1")
    plan["activity"][0]["reference"] = {"reference": "ServiceRequest/sr-derm"}
    _only(by_check, plan, "medplum", "cpl-3")


# -- (b) required bindings only: codes nobody else checks ------------------------------------------------


def test_bindings_alone_reject_careplan_status_bogus(by_check) -> None:
    plan = example("CarePlan/cp1")
    plan["status"] = "bogus"
    _only(by_check, plan, "bindings", "CarePlan.status: 'bogus' is not in required value set RequestStatus")


def test_bindings_alone_reject_activity_definition_kind_procedure(by_check) -> None:
    definition = example("ActivityDefinition/therapeutic-dermabrasion")
    definition["kind"] = "Procedure"
    _only(
        by_check, definition, "bindings", "ActivityDefinition.kind: 'Procedure' is not in required value set"
    )


def test_bindings_alone_reject_careplan_detail_kind_procedure(by_check) -> None:
    plan = example("CarePlan/cp1")
    plan["activity"][0]["detail"]["kind"] = "Procedure"
    _only(by_check, plan, "bindings", "CarePlan.activity[0].detail.kind: 'Procedure'")


# -- (c) R4B round trip only: primitive formats Medplum's regexes allow ---------------------------------


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("2025-03-03T10:00:00", "scheduledTiming.event[0]"),  # hours without a time zone
        ("2025-02-30", "scheduledTiming.event[0]"),  # not a calendar date
    ],
)
def test_roundtrip_alone_rejects_bad_timing_event(by_check, value: str, fragment: str) -> None:
    plan = example("CarePlan/cp1")
    plan["activity"][0]["detail"]["scheduledTiming"]["event"][0] = value
    _only(by_check, plan, "roundtrip", f"CarePlan.activity[0].detail.{fragment}")
