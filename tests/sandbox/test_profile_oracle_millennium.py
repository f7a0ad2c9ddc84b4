"""The `oracle-millennium` profile: Oracle Health Millennium R4's published capabilities and DocumentReference rules."""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.sandbox.conftest import (
    assert_refused,
    careplan,
    codes,
    declared_resources,
    delivery_transaction,
    issue_text,
    provenance,
    valid_statement,
)

pytestmark = pytest.mark.sandbox

WHEN = "2025-02-20T10:00:05+01:00"
NARRATIVE = '<div xmlns="http://www.w3.org/1999/xhtml"><p>Scar treatment plan</p></div>'


def millennium_document(**overrides: Any) -> dict[str, Any]:
    """A DocumentReference that keeps every published Millennium rule."""
    document: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "status": "current",
        "docStatus": "final",
        "type": {"coding": [{"system": "http://loinc.org", "code": "18776-5", "display": "Plan of care note"}]},
        "subject": {"reference": "Patient/p1"},
        "date": WHEN,
        "author": [{"reference": "Practitioner/pr1"}],
        "content": [
            {
                "attachment": {
                    "contentType": "application/xhtml+xml;charset=utf-8",
                    "data": base64.b64encode(NARRATIVE.encode()).decode(),
                    "creation": WHEN,
                }
            }
        ],
        "context": {"period": {"start": WHEN}},
    }
    document.update(overrides)
    return document


@pytest.fixture
def millennium(ehr_sandbox, fhir):
    ehr_sandbox.configure(profile="oracle-millennium")
    return fhir


def test_millennium_declares_careplan_and_provenance_read_and_search_and_document_writes(millennium, assert_r4):
    statement = valid_statement(millennium, assert_r4)
    resources = declared_resources(millennium)
    document = resources["DocumentReference"]

    assert "interaction" not in statement["rest"][0]  # no batch, no transaction
    assert set(resources) == {"CarePlan", "Provenance", "DocumentReference"}
    assert codes(resources["CarePlan"]["interaction"]) == {"read", "search-type"}
    assert codes(resources["CarePlan"]["searchParam"]) == {"_id", "patient", "category", "date"}
    assert codes(resources["Provenance"]["interaction"]) == {"read", "search-type"}
    assert codes(resources["Provenance"]["searchParam"]) == {"_id"}
    assert codes(document["interaction"]) == {"create", "update", "read", "search-type"}
    assert codes(document["searchParam"]) == {"_id", "patient", "encounter", "period", "type", "category"}
    assert (document["conditionalCreate"], document["conditionalUpdate"], document["updateCreate"]) == (
        False,
        False,
        False,
    )
    assert document["supportedProfile"] == ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-documentreference"]
    assert "If-Match" in document["documentation"]


def test_millennium_takes_documents_that_keep_its_rules_and_the_searches_it_documents(ehr_sandbox, millennium):
    created = millennium.post("/DocumentReference", millennium_document())
    document = created.json()
    updated = millennium.put(
        f"/DocumentReference/{document['id']}", {**document, "description": "v2"}, headers={"If-Match": 'W/"1"'}
    )
    found = millennium.get("/DocumentReference", params={"patient": "Patient/p1", "type": "http://loinc.org|18776-5"})

    assert (created.status_code, updated.status_code) == (201, 200)
    assert [entry["resource"]["description"] for entry in found.json()["entry"]] == ["v2"]
    assert millennium.get("/CarePlan", params={"patient": "Patient/p1", "category": "assess-plan"}).status_code == 200
    dated = {"category": "assess-plan", "date": ["ge2025-01-01", "le2025-12-31"]}
    assert millennium.get("/CarePlan", params=dated).status_code == 200
    assert millennium.get("/Provenance", params={"_id": "x"}).status_code == 200
    assert millennium.get(f"/DocumentReference/{document['id']}").status_code == 200
    assert ehr_sandbox.refusals() == []


def content_twice(document: dict[str, Any]) -> None:
    document["content"].append(copy.deepcopy(document["content"][0]))


def set_path(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = document
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        if value is None:
            del target[last]
        else:
            target[last] = value

    return change


BROKEN_DOCUMENTS = {
    "two content entries": (content_twice, "millennium-one-content"),
    "text/xml": (set_path("content.0.attachment.contentType", "text/xml"), "millennium-mime-type"),
    "no contentType": (set_path("content.0.attachment.contentType", None), "millennium-mime-type"),
    "creation without time": (set_path("content.0.attachment.creation", "2025-02-20"), "millennium-date-time"),
    "period without time": (set_path("context.period.start", "2025-02-20"), "millennium-date-time"),
    "status superseded": (set_path("status", "superseded"), "millennium-status-current"),
    "docStatus preliminary": (set_path("docStatus", "preliminary"), "millennium-doc-status-final"),
    "no docStatus": (set_path("docStatus", None), "millennium-doc-status-final"),
    "Group subject": (set_path("subject", {"reference": "Group/g1"}), "millennium-subject-patient"),
    "type without LOINC": (
        set_path("type", {"coding": [{"system": "http://snomed.info/sct", "code": "734163000"}]}),
        "millennium-type-loinc",
    ),
    "Organization author": (set_path("author", [{"reference": "Organization/o1"}]), "millennium-author-practitioner"),
    "Device authenticator": (
        set_path("authenticator", {"reference": "Device/d1"}),
        "millennium-authenticator-practitioner",
    ),
}


@pytest.mark.parametrize(("change", "rule"), BROKEN_DOCUMENTS.values(), ids=BROKEN_DOCUMENTS.keys())
def test_millennium_refuses_a_document_create_that_breaks_a_published_rule(ehr_sandbox, millennium, change, rule):
    document = millennium_document()
    change(document)

    response = millennium.post("/DocumentReference", document)

    assert response.status_code == 422
    assert rule in issue_text(response.json()) and "docs.oracle.com" in issue_text(response.json())
    [refused] = ehr_sandbox.refusals()
    assert refused["refusal"]["kind"] == "vendor-rule" and refused["refusal"]["detail"].startswith(rule)
    assert ehr_sandbox.store() == []


@pytest.mark.parametrize(
    ("headers", "change", "status", "rule"),
    [
        ({}, lambda document: None, 400, "millennium-if-match"),
        ({"If-Match": 'W/"1"'}, set_path("author", None), 422, "millennium-author-practitioner"),
        ({"If-Match": 'W/"1"'}, content_twice, 422, "millennium-one-content"),
    ],
    ids=["without If-Match", "without author", "two content entries"],
)
def test_millennium_refuses_a_document_update_that_breaks_a_published_rule(
    ehr_sandbox, millennium, headers, change, status, rule
):
    document = millennium.post("/DocumentReference", millennium_document()).json()
    change(document)

    response = millennium.put(f"/DocumentReference/{document['id']}", document, headers=headers)

    assert response.status_code == status
    assert [entry["refusal"]["detail"].split(":")[0] for entry in ehr_sandbox.refusals()] == [rule]
    assert ehr_sandbox.store("DocumentReference")[0]["meta"]["versionId"] == "1"


@pytest.mark.parametrize(
    ("send", "status", "kind"),
    [
        (lambda f: f.post("/CarePlan", careplan()), 405, "undeclared-interaction"),
        (lambda f: f.post("/Provenance", provenance("DocumentReference/d1")), 405, "undeclared-interaction"),
        (lambda f: f.post("", delivery_transaction()), 405, "undeclared-interaction"),
        (lambda f: f.post("", {**delivery_transaction(), "type": "batch"}), 405, "undeclared-interaction"),
        (lambda f: f.get("/Patient/p1"), 404, "undeclared-type"),
        (lambda f: f.get("/DocumentReference", params={"patient": "Patient/p1", "identifier": "a|b"}), 400,
         "undeclared-search-param"),
        (lambda f: f.get("/Provenance", params={"target": "DocumentReference/d1"}), 400, "undeclared-search-param"),
        (lambda f: f.get("/Provenance", params={"_tag": "a|b"}), 400, "undeclared-search-param"),
        (lambda f: f.post("/DocumentReference", millennium_document(), headers={"If-None-Exist": "_id=x"}), 400,
         "conditional-create"),
        (lambda f: f.put("/DocumentReference/new-id", millennium_document(id="new-id"), headers={"If-Match": 'W/"1"'}),
         405, "undeclared-interaction"),
        (lambda f: f.get("/DocumentReference", params={"type": "http://loinc.org|18776-5"}), 400, "vendor-rule"),
        (lambda f: f.get("/CarePlan", params={"patient": "Patient/p1"}), 400, "vendor-rule"),
        (lambda f: f.get("/CarePlan", params={"category": "careteam"}), 400, "vendor-rule"),
        (lambda f: f.get("/CarePlan", params={"category": "assess-plan", "date": "ge2025-01-01"}), 400,
         "vendor-rule"),
        (lambda f: f.get("/DocumentReference", params={"patient": "Patient/p1", "period": "le2025-01-01"}), 400,
         "vendor-rule"),
    ],
    ids=["careplan-create", "provenance-create", "transaction", "batch", "patient", "identifier", "target", "_tag",
         "if-none-exist", "update-as-create", "document-search-without-patient", "careplan-search-without-category",
         "careplan-category-not-assess-plan", "careplan-date-without-le", "document-period-le"],
)
def test_millennium_refuses_and_logs_what_it_does_not_declare(ehr_sandbox, millennium, send, status, kind):
    assert_refused(ehr_sandbox, send(millennium), status, kind)


@pytest.mark.parametrize(
    "overrides",
    [{"content": "x"}, {"type": {"coding": "x"}}, {"content": [{"attachment": ["x"]}]}],
    ids=["content not a list", "coding not a list", "attachment not an object"],
)
def test_millennium_answers_a_document_that_is_not_r4_with_400_not_a_crash(ehr_sandbox, millennium, overrides):
    response = millennium.post("/DocumentReference", millennium_document(**overrides))

    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"
    assert ehr_sandbox.store() == []
