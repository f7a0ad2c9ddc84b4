"""Fixtures for the CDS Hooks tests: the care-plan service trusting an EHR's JWTs, reading the real catalog."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.careplan.conftest import catalog_url  # noqa: F401 - the real catalog the care-plan service reads
from tests.cds.support import BASE_URL, EHR_ISSUER, Ehr, Shapes
from tests.security.issuer import Issuer
from tests.support.apps import careplan_app, running


@pytest.fixture(scope="session")
def shapes() -> Shapes:
    return Shapes()


@pytest.fixture(scope="session")
def ehr_issuer() -> Issuer:
    return Issuer(issuer=EHR_ISSUER)


def cds_settings(issuer: Issuer, folder: Path, **extra: object) -> dict[str, object]:
    return {"CDS_AUTH": "jwt", "CDS_ISSUER": issuer.issuer, "CDS_JWKS_FILE": issuer.write_jwks(folder),
            "CDS_BASE_URL": BASE_URL, "DISPATCHER": "off", "LOG_LEVEL": "WARNING", **extra}


@pytest.fixture(scope="module")
def ehr(catalog_url: str, ehr_issuer: Issuer, shapes: Shapes,  # noqa: F811
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ehr]:
    """The care-plan service (SQLite; hooks store nothing but feedback) and an EHR calling its CDS services."""
    folder = tmp_path_factory.mktemp("cds")
    app = careplan_app(f"sqlite:///{folder}/careplan.db", CATALOG_URL=catalog_url, **cds_settings(ehr_issuer, folder))
    with running(app) as client:
        yield Ehr(client, ehr_issuer, shapes)
