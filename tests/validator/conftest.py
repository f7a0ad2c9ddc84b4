"""Fixtures for the validator's own tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support.r4 import R4Validator
from tests.validator.helpers import errors_by_check


@pytest.fixture
def by_check(r4_validator: R4Validator) -> Callable[[Any], dict[str, list[str]]]:
    """``by_check(resource)`` -> {"medplum": [...], "bindings": [...], "roundtrip": [...]} (errors only)."""
    return lambda resource: errors_by_check(r4_validator, resource)
