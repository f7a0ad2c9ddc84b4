"""Text that a FHIR string or an XHTML narrative cannot carry never reaches a plan.

A coded answer's `display` holding U+0000, U+0001, U+000B or U+FFFE (valid JSON, invalid
FHIR and XML) is refused with a 422 naming the question; and the displays a plan shows
are the catalog's, never the caller's, so title, description and `text.div` stay clean.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from tests.careplan.conftest import (
    answer,
    careplan,  # noqa: F401 - the care-plan app fixture
    example,
)
from tests.support.apps import FHIR_JSON

BAD_CHARACTERS = ["\u0000", "\u0001", "\u000b", "\ufffe", "\uffff"]


def apply_request(parameters: dict) -> dict:
    subject = next(p for p in parameters["parameter"] if p["name"] == "subject")["valueReference"]["reference"]
    assessment = next(p for p in parameters["parameter"] if p["name"] == "assessment")["resource"]
    return {"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueString": subject},
        {"name": "data", "resource": {"resourceType": "Bundle", "type": "collection",
                                      "entry": [{"resource": assessment}]}}]}


@pytest.mark.parametrize("character", BAD_CHARACTERS, ids=lambda c: f"U+{ord(c):04X}")
def test_a_coded_answer_display_with_a_control_character_is_422_naming_the_item(careplan,  # noqa: F811
                                                                               character, r4_validator):
    parameters = example("atrophic-chest-visible-vessels")
    answer(parameters, "body-site")["answer"][0]["valueCoding"]["display"] = f"Chest{character}</td><b>"
    for path, body in (("/fhir/CarePlan/$generate", parameters), ("/fhir/PlanDefinition/$apply",
                                                                   apply_request(parameters))):
        response = careplan.post(path, json=body, headers=FHIR_JSON)
        assert response.status_code == 422, (path, response.text[:300])
        outcome = response.json()
        r4_validator.assert_valid(outcome)
        issue = outcome["issue"][0]
        assert issue["expression"][0].endswith(".valueCoding.display")
        assert "'body-site'" in issue["diagnostics"] and f"U+{ord(character):04X}" in issue["diagnostics"]
    stored = careplan.get("/fhir/CarePlan", params={"subject": "Patient/example-1"}).json()
    assert not stored.get("entry"), "nothing stored"


def test_the_plan_shows_the_catalog_display_not_the_callers(careplan, r4_validator):  # noqa: F811
    parameters = example("atrophic-chest-visible-vessels")
    answer(parameters, "body-site")["answer"][0]["valueCoding"]["display"] = "</div><script>alert(1)</script>"
    answer(parameters, "scar-type")["answer"][0]["valueCoding"].pop("display", None)
    response = careplan.post("/fhir/CarePlan/$generate", json=parameters, headers=FHIR_JSON)
    assert response.status_code == 201, response.text[:300]
    plan = response.json()
    r4_validator.assert_valid(plan)
    for value in (plan["title"], plan["description"], plan["text"]["div"]):
        assert "script" not in value and "anterior-upper-chest" not in value
    assert plan["title"] == "Atrophic scar treatment plan, anterior surface of the upper chest"
    root = ET.fromstring(plan["text"]["div"])
    assert root.tag == "{http://www.w3.org/1999/xhtml}div"


def test_a_lone_surrogate_in_a_display_is_refused(careplan):  # noqa: F811
    parameters = example("atrophic-chest-visible-vessels")
    answer(parameters, "body-site")["answer"][0]["valueCoding"]["display"] = "SURROGATE"
    body = json.dumps(parameters).replace("SURROGATE", "\\ud800").encode()
    response = careplan.post("/fhir/CarePlan/$generate", content=body, headers=FHIR_JSON)
    assert response.status_code in (400, 422), response.text[:300]
    assert response.json()["resourceType"] == "OperationOutcome"
