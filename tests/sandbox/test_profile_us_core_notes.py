"""The `us-core-notes` profile: clinical notes written the proposed US Core "Writing Clinical Notes" way."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.sandbox.conftest import (
    assert_refused,
    careplan,
    codes,
    declared_resources,
    delivery_transaction,
    issue_text,
    refusal_kinds,
    valid_statement,
)

pytestmark = pytest.mark.sandbox

US_CORE_DOCUMENT_REFERENCE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-documentreference"


def us_core_note(**overrides: Any) -> dict[str, Any]:
    """A DocumentReference with every element the US Core DocumentReference profile makes mandatory."""
    note: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "meta": {"profile": [US_CORE_DOCUMENT_REFERENCE]},
        "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "18776-5", "display": "Plan of care note"}]},
        "category": [
            {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                        "code": "clinical-note",
                    }
                ]
            }
        ],
        "subject": {"reference": "Patient/p1"},
        "date": "2025-02-20T10:00:05+01:00",
        "author": [{"reference": "Practitioner/pr1"}],
        "content": [
            {"attachment": {"contentType": "text/plain", "data": base64.b64encode(b"Scar treatment plan").decode()}}
        ],
    }
    note.update(overrides)
    return note


@pytest.fixture
def notes(ehr_sandbox, fhir):
    ehr_sandbox.configure(profile="us-core-notes")
    return fhir


def test_us_core_notes_declares_document_create_read_search_and_the_us_core_profile(notes, assert_r4):
    statement = valid_statement(notes, assert_r4)
    [document] = declared_resources(notes).values()

    assert "interaction" not in statement["rest"][0]  # no batch, no transaction
    assert statement["implementationGuide"] == ["http://hl7.org/fhir/us/core/ImplementationGuide/hl7.fhir.us.core"]
    assert document["type"] == "DocumentReference"
    assert document["supportedProfile"] == [US_CORE_DOCUMENT_REFERENCE]
    assert codes(document["interaction"]) == {"create", "read", "search-type"}
    assert codes(document["searchParam"]) == {"_id", "patient", "category", "date", "period", "status", "type"}
    assert (document["conditionalCreate"], document["updateCreate"]) == (False, False)


def test_us_core_notes_takes_a_us_core_note_and_finds_it_by_patient_and_type(ehr_sandbox, notes):
    created = notes.post("/DocumentReference", us_core_note())
    found = notes.get("/DocumentReference", params={"patient": "Patient/p1", "type": "http://loinc.org|18776-5"})

    assert created.status_code == 201
    assert found.json()["total"] == 1
    assert notes.get(f"/DocumentReference/{created.json()['id']}").status_code == 200
    assert ehr_sandbox.refusals() == []


@pytest.mark.parametrize(
    ("overrides", "rule"),
    [
        ({"type": {"text": "Plan"}}, "us-core-type"),
        ({"category": None}, "us-core-category"),
        ({"subject": {"reference": "Group/g1"}}, "us-core-subject"),
        ({"content": [{"attachment": {"contentType": "text/plain", "title": "plan"}}]}, "us-core-6"),
    ],
    ids=["type without LOINC", "no category", "Group subject", "attachment without data or url"],
)
def test_us_core_notes_refuses_a_note_without_what_us_core_makes_mandatory(ehr_sandbox, notes, overrides, rule):
    note = {key: value for key, value in us_core_note(**overrides).items() if value is not None}

    response = notes.post("/DocumentReference", note)

    assert response.status_code == 422
    assert rule in issue_text(response.json())
    assert refusal_kinds(ehr_sandbox) == ["vendor-rule"]
    assert ehr_sandbox.store() == []


@pytest.mark.parametrize(
    ("send", "status", "kind"),
    [
        (lambda f: f.post("/CarePlan", careplan()), 404, "undeclared-type"),
        (lambda f: f.post("", delivery_transaction()), 405, "undeclared-interaction"),
        (lambda f: f.put("/DocumentReference/d1", us_core_note(id="d1")), 405, "undeclared-interaction"),
        (lambda f: f.get("/DocumentReference", params={"identifier": "a|b"}), 400, "undeclared-search-param"),
        (lambda f: f.post("/DocumentReference", us_core_note(), headers={"If-None-Exist": "_id=x"}), 400,
         "conditional-create"),
    ],
    ids=["careplan", "transaction", "update", "identifier", "if-none-exist"],
)
def test_us_core_notes_refuses_and_logs_what_it_does_not_declare(ehr_sandbox, notes, send, status, kind):
    assert_refused(ehr_sandbox, send(notes), status, kind)
