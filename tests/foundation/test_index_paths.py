"""Index extraction walks plain `Type.a.b` paths in Python; it must find exactly what fhirpathpy finds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fhirpathpy
import pytest
from fhirpathpy.models import models as fhirpath_models

from services.careplan.searchparams import SEARCH_PARAMS as CAREPLAN_PARAMS
from services.catalog.searchparams import SEARCH_PARAMS as CATALOG_PARAMS
from services.catalog.settings import CONTENT_DIR
from services.fhir.access import Grants, Principal
from services.fhir.audit import AuditTrail, Outcome
from services.fhir.routes import FhirRequest
from services.fhir.searchparams import _simple_path

EXAMPLES = Path(__file__).resolve().parents[2] / "contracts" / "fhir" / "examples"
RESOURCES = [json.loads(p.read_text()) for p in sorted(CONTENT_DIR.rglob("*.json"))]
RESOURCES += [json.loads(p.read_text()) for p in sorted(EXAMPLES.glob("*.careplan.json"))]
RESOURCES += [p["resource"] for path in sorted(EXAMPLES.glob("*.parameters.json"))
              for p in json.loads(path.read_text())["parameter"] if p["name"] == "assessment"]


def audit_events() -> list[dict[str, Any]]:
    """AuditEvents as the audit trail writes them: anonymous, a user with a fhirUser and a client, a backend
    service; entities with and without patients, a patient twice."""
    trail = AuditTrail(None, service="careplan")  # type: ignore[arg-type] - builds events, stores nothing
    grants = Grants(())
    principals = [Principal.anonymous(), Principal("svc", "svc", "https://idp", grants),
                  Principal("dr-1", "ehr-app", "https://idp", grants, fhir_user="Practitioner/7")]
    entities = [[], ["CarePlan/a", "Patient/p1"], ["CarePlan/a", "QuestionnaireResponse/b", "Patient/p1", "Patient/p2"]]
    return [trail.event(FhirRequest("read", "CarePlan", "a"), principal, Outcome(200), entity, "10.0.0.1")
            for principal in principals for entity in entities]


RESOURCES += audit_events()
PARAMS = [(t, d) for params in (CATALOG_PARAMS, CAREPLAN_PARAMS) for t, defs in params.items() for d in defs.values()
          if _simple_path(d.expression) is not None]  # the others are evaluated by fhirpathpy itself


@pytest.mark.parametrize(("resource_type", "definition"), PARAMS, ids=[f"{t}.{d.name}" for t, d in PARAMS])
def test_simple_paths_find_what_fhirpath_finds(resource_type, definition):
    native = _simple_path(definition.expression)
    reference = fhirpathpy.compile(definition.expression, model=fhirpath_models["r4"])
    resources = [r for r in RESOURCES if r.get("resourceType") == resource_type]
    for resource in resources:
        assert native(resource) == reference(resource), (resource.get("id"), definition.expression)


def test_every_resource_type_with_a_simple_path_is_checked_on_real_resources():
    assert {t for t, _ in PARAMS} <= {r["resourceType"] for r in RESOURCES}


def test_choice_type_paths_are_left_to_fhirpath():
    assert _simple_path("ActivityDefinition.product") is None
    assert _simple_path("ActivityDefinition.product.ofType(Reference)") is None
    assert _simple_path("CarePlan.subject") is not None
