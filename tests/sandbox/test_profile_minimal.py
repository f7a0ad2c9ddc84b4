"""The `minimal` profile: an EHR that takes CarePlan writes one at a time and nothing else."""

from __future__ import annotations

import pytest

from tests.sandbox.conftest import (
    assert_refused,
    careplan,
    codes,
    declared_resources,
    delivery_transaction,
    provenance,
    valid_statement,
)

pytestmark = pytest.mark.sandbox


@pytest.fixture
def minimal(ehr_sandbox, fhir):
    ehr_sandbox.configure(profile="minimal")
    return fhir


def test_minimal_declares_careplan_create_read_update_and_search_by_id_or_patient_only(minimal, assert_r4):
    statement = valid_statement(minimal, assert_r4)
    assert "interaction" not in statement["rest"][0]  # no transaction, no batch
    [plan] = declared_resources(minimal).values()

    assert plan["type"] == "CarePlan"
    assert codes(plan["interaction"]) == {"create", "read", "update", "search-type"}
    assert codes(plan["searchParam"]) == {"_id", "patient"}
    assert (plan["conditionalCreate"], plan["conditionalUpdate"], plan["updateCreate"]) == (False, False, False)
    assert plan["conditionalDelete"] == "not-supported"


def test_minimal_takes_what_it_declares_without_refusal(ehr_sandbox, minimal):
    created = minimal.post("/CarePlan", careplan()).json()

    updated = minimal.put(f"/CarePlan/{created['id']}", {**created, "status": "revoked"})
    found = minimal.get("/CarePlan", params={"patient": "Patient/p1", "_count": "10"}).json()

    assert updated.status_code == 200
    assert [entry["resource"]["status"] for entry in found["entry"]] == ["revoked"]
    assert minimal.get(f"/CarePlan/{created['id']}").status_code == 200
    assert ehr_sandbox.refusals() == []


@pytest.mark.parametrize(
    ("send", "status", "kind"),
    [
        (lambda f: f.post("/Provenance", provenance("CarePlan/x")), 404, "undeclared-type"),
        (lambda f: f.post("", delivery_transaction()), 405, "undeclared-interaction"),
        (lambda f: f.http.delete("/CarePlan/x"), 405, "undeclared-interaction"),
        (lambda f: f.put("/CarePlan/new-id", careplan(id="new-id")), 405, "undeclared-interaction"),
        (lambda f: f.put("/CarePlan?patient=Patient/p1", careplan()), 405, "undeclared-interaction"),
        (lambda f: f.get("/CarePlan", params={"_tag": "https://t.example|x"}), 400, "undeclared-search-param"),
        (lambda f: f.get("/CarePlan", params={"identifier": "a|b"}), 400, "undeclared-search-param"),
        (lambda f: f.post("/CarePlan", careplan(), headers={"If-None-Exist": "_id=x"}), 400, "conditional-create"),
    ],
    ids=["provenance", "transaction", "delete", "update-as-create", "conditional-update", "_tag", "identifier",
         "if-none-exist"],
)
def test_minimal_refuses_and_logs_what_it_does_not_declare(ehr_sandbox, minimal, send, status, kind):
    assert_refused(ehr_sandbox, send(minimal), status, kind)
