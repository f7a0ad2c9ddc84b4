"""The reference examples of FHIR-REFERENCE.md are valid R4 and must pass all three checks.

Why: a validator that rejects known-good resources would push the services towards invalid output.
"""

from __future__ import annotations

import pytest

from tests.validator.helpers import EXAMPLES, example


@pytest.mark.parametrize("key", sorted(EXAMPLES))
def test_reference_example_is_valid(key: str, assert_r4, r4_validator) -> None:
    resource = example(key)
    assert r4_validator.errors(resource) == []
    assert_r4(resource)


def test_transaction_urn_uuid_references_are_warnings_not_errors(r4_validator) -> None:
    """Medplum cannot infer the type behind urn:uuid references; that is a warning, never an error."""
    issues = r4_validator.issues(example("Bundle/transaction"))
    assert issues, "expected Medplum's urn:uuid reference warnings"
    assert all(i.check == "medplum" and i.severity == "warning" for i in issues)
    assert any("urn:uuid:" in i.message for i in issues)
    assert r4_validator.errors(example("Bundle/transaction")) == []
