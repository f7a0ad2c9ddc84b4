"""US Core conformance of what the delivery sends, checked with fhirpathpy against data/us-core-constraints.json.

The constraints are transcribed from the US Core StructureDefinitions (the file names the page of each
profile); the independent R4 validator checks the base resource, these check the profile on top of it.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import fhirpathpy
from fhirpathpy.models import models as fhirpath_models

CONSTRAINTS = Path(__file__).parent / "data" / "us-core-constraints.json"


@cache
def _profiles() -> dict[str, Any]:
    return json.loads(CONSTRAINTS.read_text())


def violations(resource: dict[str, Any], resource_type: str) -> list[str]:
    """The constraints of the US Core profile for `resource_type` that `resource` breaks (empty: it conforms)."""
    broken = []
    for constraint in _profiles()[resource_type]["constraints"]:
        result = fhirpathpy.evaluate(resource, constraint["expression"], model=fhirpath_models["r4"])
        if result != [True]:
            broken.append(f"{constraint['element']}: {constraint['rule']}")
    return broken


def assert_conforms(resource: dict[str, Any], resource_type: str) -> None:
    broken = violations(resource, resource_type)
    assert not broken, f"not US Core {resource_type} ({_profiles()[resource_type]['source']}): {broken}"
