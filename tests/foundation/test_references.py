"""The one reference walker (services/fhir/references.py) and what is built on it."""

from __future__ import annotations

import copy

from services.fhir.references import map_references, referenced_ids, references_in, rewrite_references

PLAN = {
    "resourceType": "CarePlan",
    "instantiatesCanonical": ["https://fhir.cicatrix.org/PlanDefinition/p|1"],
    "subject": {"reference": "Patient/p1"},
    "supportingInfo": [{"reference": "QuestionnaireResponse/qr-1"}, {"reference": "QuestionnaireResponse/qr-1"}],
    "replaces": [{"reference": "CarePlan/old", "display": "the plan before"}],
    "activity": [{"detail": {"productReference": {"reference": "Medication/gel"},
                             "extension": [{"valueReference": {"reference": "QuestionnaireResponse/qr-2"}}]}}],
    "note": [{"text": "reference: CarePlan/not-a-reference"}],
}


def test_referenced_ids_lists_each_referenced_id_once_in_document_order():
    found = referenced_ids(PLAN, ("QuestionnaireResponse", "CarePlan"))

    assert found == {"QuestionnaireResponse": ["qr-1", "qr-2"], "CarePlan": ["old"]}


def test_referenced_ids_skips_absolute_and_versioned_references():
    resource = {"a": {"reference": "https://ehr.example/fhir/CarePlan/x"},
                "b": {"reference": "CarePlan/y/_history/2"}, "c": {"reference": "urn:uuid:1"}}

    assert referenced_ids(resource, ("CarePlan",)) == {"CarePlan": []}


def test_map_references_copies_and_leaves_the_resource_unchanged():
    before = copy.deepcopy(PLAN)

    mapped = map_references(PLAN, lambda ref, reference: ref | {"display": reference.upper()})

    assert before == PLAN
    assert mapped["replaces"] == [{"reference": "CarePlan/old", "display": "CAREPLAN/OLD"}]
    assert mapped["activity"][0]["detail"]["extension"][0]["valueReference"]["display"] == "QUESTIONNAIRERESPONSE/QR-2"
    assert mapped["instantiatesCanonical"] == PLAN["instantiatesCanonical"]
    assert mapped["note"] == PLAN["note"]


def test_rewrite_references_maps_placeholders_and_leaves_canonicals_alone():
    bundle_entry = {"subject": {"reference": "urn:uuid:abc", "display": "P"},
                    "basedOn": [{"reference": "CarePlan/kept"}], "instantiatesCanonical": ["urn:uuid:abc"]}

    rewritten = rewrite_references(bundle_entry, {"urn:uuid:abc": "Patient/7"})

    assert rewritten == {"subject": {"reference": "Patient/7", "display": "P"},
                         "basedOn": [{"reference": "CarePlan/kept"}], "instantiatesCanonical": ["urn:uuid:abc"]}
    assert bundle_entry["subject"]["reference"] == "urn:uuid:abc"


def test_references_in_lists_what_map_references_visits_in_the_same_order_without_copying():
    visited: list[str] = []
    map_references(PLAN, lambda ref, reference: visited.append(reference) or ref)
    assert references_in(PLAN) == visited
    assert references_in({"a": [{"b": {"reference": "X/1"}, "reference": "Y/2"}]}) == ["X/1", "Y/2"]
