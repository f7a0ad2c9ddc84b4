"""The published contracts (contracts/) match what the services do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli import openapi_documents
from tests.support.apps import careplan_app, catalog_app

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"
OPERATION_DEFINITIONS = sorted((CONTRACTS / "fhir").glob("OperationDefinition-*.json"))


@pytest.mark.parametrize("path", OPERATION_DEFINITIONS, ids=lambda p: p.name)
def test_operation_definitions_are_valid_r4(path, r4_validator):
    r4_validator.assert_valid(json.loads(path.read_text()))


def test_every_operation_in_a_capability_statement_is_published(tmp_path):
    published = {json.loads(p.read_text())["url"] for p in OPERATION_DEFINITIONS}
    apps = (catalog_app(f"sqlite:///{tmp_path}/catalog.db", content_dir=None),
            careplan_app(f"sqlite:///{tmp_path}/careplan.db"))
    for app in apps:
        rest = app.state.ctx.capability.build()["rest"][0]
        for operation in [*rest.get("operation", []), *(op for r in rest["resource"] for op in r.get("operation", []))]:
            definition = operation["definition"]
            assert definition in published or definition.startswith("http://hl7.org/fhir/"), definition


@pytest.mark.parametrize("service", ["catalog", "careplan"])
def test_openapi_document_has_not_drifted(service):
    committed = (CONTRACTS / "openapi" / f"{service}.json").read_text()
    assert committed == openapi_documents()[service], "run `cicatrix openapi` and review the diff"
