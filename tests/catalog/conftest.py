"""Fixtures shared by the catalog's API tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.catalog.factories import catalog
from tests.support.r4 import R4Validator


@pytest.fixture(scope="module")
def client(module_database_url: str, r4_validator: R4Validator) -> Iterator[TestClient]:
    """The catalog on each database, its answers validated as R4; one per test module."""
    with catalog(module_database_url, r4_validator) as client:
        yield client
