"""Building the services for in-process tests: each app on its own database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.careplan.app import create_app as create_careplan
from services.careplan.settings import CareplanSettings
from services.catalog.app import create_app as create_catalog
from services.catalog.settings import CONTENT_DIR, CatalogSettings

FHIR_JSON = {"content-type": "application/fhir+json"}


def catalog_app(database_url: str, *, content_dir: Path | None = CONTENT_DIR, **settings: object) -> FastAPI:
    return create_catalog(CatalogSettings(DATABASE_URL=database_url, CONTENT_DIR=content_dir or CONTENT_DIR,
                                          LOAD_CONTENT=content_dir is not None, **settings))


def careplan_app(database_url: str, **settings: object) -> FastAPI:
    return create_careplan(CareplanSettings(DATABASE_URL=database_url, **settings))


@contextmanager
def running(app: FastAPI) -> Iterator[TestClient]:
    """The app with its lifespan (migrations, content) run, as an HTTP client; raises server errors as 500s."""
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
