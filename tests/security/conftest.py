"""Fixtures for the security tests: a token issuer, and both services trusting it (JWT mode)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.careplan.conftest import catalog_url  # noqa: F401 - the real catalog the care-plan service reads
from tests.security.issuer import Issuer
from tests.support.apps import careplan_app, catalog_app, running


@pytest.fixture(scope="session")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
def jwks_file(issuer: Issuer, tmp_path: Path) -> Path:
    return issuer.write_jwks(tmp_path)


@pytest.fixture(scope="module")
def secured_catalog(module_database_url: str, issuer: Issuer,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The catalog (shipped content, loaded once per module and backend) requiring tokens from `issuer`."""
    jwks = issuer.write_jwks(tmp_path_factory.mktemp("jwks"))
    with running(catalog_app(module_database_url, LOG_LEVEL="WARNING", **issuer.settings(jwks))) as client:
        yield client


@pytest.fixture
def secured_careplan(database_url: str, catalog_url: str, issuer: Issuer,  # noqa: F811
                     jwks_file: Path) -> Iterator[TestClient]:
    """The care-plan service requiring tokens from `issuer`, reading the (open, loopback) catalog."""
    app = careplan_app(database_url, CATALOG_URL=catalog_url, LOG_LEVEL="WARNING", DISPATCHER="off",
                       **issuer.settings(jwks_file))
    with running(app) as client:
        yield client


@pytest.fixture(scope="module")
def gate(issuer: Issuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """An empty catalog requiring tokens, for what does not depend on data or the database (401s, open paths)."""
    folder = tmp_path_factory.mktemp("gate")
    app = catalog_app(f"sqlite:///{folder}/gate.db", content_dir=None, LOG_LEVEL="WARNING",
                      **issuer.settings(issuer.write_jwks(folder)))
    with running(app) as client:
        yield client
