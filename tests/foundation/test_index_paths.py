"""Index extraction walks plain `Type.a.b` paths in Python; it must find exactly what fhirpathpy finds."""

from __future__ import annotations

import json
from pathlib import Path

import fhirpathpy
import pytest
from fhirpathpy.models import models as fhirpath_models

from services.careplan.searchparams import SEARCH_PARAMS as CAREPLAN_PARAMS
from services.catalog.searchparams import SEARCH_PARAMS as CATALOG_PARAMS
from services.catalog.settings import CONTENT_DIR
from services.fhir.searchparams import _simple_path

EXAMPLES = Path(__file__).resolve().parents[2] / "contracts" / "fhir" / "examples"
RESOURCES = [json.loads(p.read_text()) for p in sorted(CONTENT_DIR.rglob("*.json"))]
RESOURCES += [json.loads(p.read_text()) for p in sorted(EXAMPLES.glob("*.careplan.json"))]
PARAMS = [(t, d) for params in (CATALOG_PARAMS, CAREPLAN_PARAMS) for t, defs in params.items() for d in defs.values()
          if _simple_path(d.expression) is not None]  # the others are evaluated by fhirpathpy itself


@pytest.mark.parametrize(("resource_type", "definition"), PARAMS, ids=[f"{t}.{d.name}" for t, d in PARAMS])
def test_simple_paths_find_what_fhirpath_finds(resource_type, definition):
    native = _simple_path(definition.expression)
    reference = fhirpathpy.compile(definition.expression, model=fhirpath_models["r4"])
    resources = [r for r in RESOURCES if r.get("resourceType") == resource_type]
    for resource in resources:
        assert native(resource) == reference(resource), (resource.get("id"), definition.expression)


def test_choice_type_paths_are_left_to_fhirpath():
    assert _simple_path("ActivityDefinition.product") is None
    assert _simple_path("ActivityDefinition.product.ofType(Reference)") is None
    assert _simple_path("CarePlan.subject") is not None
