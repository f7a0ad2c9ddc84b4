"""schemathesis against each service's OpenAPI document, in-process against the ASGI app.

Every operation of the published document gets generated requests, both ones that fit
the document and ones that do not: no 5xx (schemathesis' own `not_a_server_error`
check), every error an OperationOutcome in FHIR JSON, and a refused write stores
nothing. Bounded here; `make fuzz` raises the number of examples.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import ASGIClient

from tests.security.fuzzing import assert_fhir_answer, stored_rows
from tests.security.strategies import fuzz_settings
from tests.support.apps import careplan_app, catalog_app, running

pytestmark = pytest.mark.fuzz
WRITES = {"POST", "PUT", "PATCH", "DELETE"}


@pytest.fixture
def catalog(database_url: str) -> Iterator[FastAPI]:
    app = catalog_app(database_url, LOG_LEVEL="CRITICAL")
    with running(app):
        yield app


@pytest.fixture
def careplan(database_url: str, catalog_url: str) -> Iterator[FastAPI]:
    app = careplan_app(database_url, CATALOG_URL=catalog_url, LOG_LEVEL="CRITICAL", DISPATCHER="off")
    with running(app):
        yield app


def fuzz(app: FastAPI, examples_per_operation: int) -> int:
    """Run every operation of the app's OpenAPI document; returns how many operations were fuzzed."""
    schema = schemathesis.openapi.from_dict(app.openapi())
    schema.app = app
    client = ASGIClient(app)  # not entered: the test's `running` owns the app's lifespan
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        strategy = st.one_of(operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
                             operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))

        @fuzz_settings(examples_per_operation)
        @given(case=strategy)
        def run(case: schemathesis.Case) -> None:
            before = stored_rows(app.state.ctx)
            response = case.call(session=client)
            case.validate_response(response, checks=[not_a_server_error])
            what = f"{case.method} {case.formatted_path}"
            content_type = (response.headers.get("content-type") or [""])[0]
            if case.path.startswith("/cds-services") and response.status_code < 400:  # CDS Hooks JSON, not FHIR
                assert content_type.startswith("application/json"), f"{what}: Content-Type {content_type!r}"
                json.loads(response.content)
            else:
                assert_fhir_answer(response.status_code, content_type, response.content, what)
            if case.method.upper() in WRITES and response.status_code >= 400:
                assert stored_rows(app.state.ctx) == before, f"{what} was refused but stored something"

        run()
    return len(operations)


def test_catalog_openapi_operations(catalog):
    assert fuzz(catalog, 6) >= 15


def test_careplan_openapi_operations(careplan):
    assert fuzz(careplan, 8) >= 12
