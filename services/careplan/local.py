"""Planning without a running stack: an in-process catalog behind the real catalog client.

`cicatrix plan --local` and the example regeneration use it. The catalog app runs
in this process (its own SQLite file, the shipped content) and the care-plan
service's httpx client reaches it through an ASGI transport, so the planning code
path is exactly the one the services use over the network.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from services.careplan.catalog_client import CatalogClient
from services.careplan.generate import CarePlanner
from services.careplan.knowledge import Knowledge
from services.careplan.settings import CareplanSettings


@asynccontextmanager
async def local_planner(settings: CareplanSettings | None = None,
                        content_dir: Path | None = None) -> AsyncIterator[CarePlanner]:
    from services.catalog.app import create_app
    from services.catalog.settings import CONTENT_DIR, CatalogSettings

    settings = settings or CareplanSettings()
    with tempfile.TemporaryDirectory(prefix="cicatrix-catalog-") as folder:
        catalog_app = create_app(CatalogSettings(DATABASE_URL=f"sqlite:///{folder}/catalog.db",
                                                 CONTENT_DIR=content_dir or CONTENT_DIR, LOG_LEVEL="WARNING"))
        async with catalog_app.router.lifespan_context(catalog_app):
            transport = httpx.ASGITransport(app=catalog_app)
            client = CatalogClient("http://catalog.local/fhir", fresh_seconds=3600, transport=transport)
            try:
                yield CarePlanner(Knowledge(client), settings.calendar(), settings.QUESTIONNAIRE_URL)
            finally:
                await client.close()
