"""Helpers for the validator's own tests: the reference examples and a per-check view of findings."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from tests.support.r4 import R4Validator

EXAMPLES_FILE = Path(__file__).parent / "examples.json"
EXAMPLES: dict[str, dict[str, Any]] = json.loads(EXAMPLES_FILE.read_text(encoding="utf-8"))["examples"]


def example(key: str) -> dict[str, Any]:
    """A deep copy of a reference example, safe to mutate in a test."""
    return copy.deepcopy(EXAMPLES[key])


def errors_by_check(validator: R4Validator, resource: Any) -> dict[str, list[str]]:
    """Error messages grouped by check, so a test can assert which check caught a problem."""
    grouped: dict[str, list[str]] = {"medplum": [], "bindings": [], "roundtrip": []}
    for issue in validator.issues(resource):
        if issue.is_error:
            grouped[issue.check].append(str(issue))
    return grouped
