"""The shipped content as the catalog serves it: loaded idempotently, valid R4 page after page, on both databases."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.catalog.content import content_files, load_content
from services.catalog.searchparams import CATALOG_TYPES
from services.catalog.settings import CONTENT_DIR
from tests.support.apps import catalog_app, running


@pytest.fixture(scope="module")
def served(module_database_url: str) -> Iterator[TestClient]:
    with running(catalog_app(module_database_url, LOG_LEVEL="WARNING")) as client:
        yield client


def test_every_served_resource_is_valid_r4_paging_through_every_type(served, r4_validator):
    files = {(json.loads(p.read_text())["resourceType"], p.stem) for p in content_files(CONTENT_DIR)}
    seen = set()
    for resource_type in CATALOG_TYPES:
        url: str | None = f"/fhir/{resource_type}?_count=7"
        pages = 0
        while url:
            bundle = served.get(url).json()
            r4_validator.assert_valid(bundle)
            for entry in bundle.get("entry", []):
                r4_validator.assert_valid(entry["resource"])
                seen.add((resource_type, entry["resource"]["id"]))
            url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
            url = url.split("://", 1)[1].split("/", 1)[1] if url else None
            url = f"/{url}" if url else None
            pages += 1
        assert pages >= 1
    assert seen == files, "every content file is served, and nothing else"


def test_reads_serve_the_stored_version_with_etag(served):
    response = served.get("/fhir/ActivityDefinition/therapeutic-dermabrasion")
    assert response.status_code == 200
    assert response.headers["etag"] == 'W/"1"'
    assert response.json()["timingTiming"]["repeat"] == {"count": 10, "countMax": 15, "frequency": 2, "period": 1,
                                                         "periodUnit": "wk"}


def _versions(client: TestClient, resource_type: str, resource_id: str) -> int:
    return client.get(f"/fhir/{resource_type}/{resource_id}/_history").json()["total"]


def test_loading_twice_creates_no_version_and_a_changed_file_exactly_one(database_url, tmp_path):
    content = tmp_path / "content"
    shutil.copytree(CONTENT_DIR, content)
    app = catalog_app(database_url, content_dir=content, LOG_LEVEL="WARNING")
    with running(app) as client:
        assert _versions(client, "ActivityDefinition", "cryomassage") == 1
    with running(app) as client:  # second start: same files
        assert _versions(client, "ActivityDefinition", "cryomassage") == 1
        assert _versions(client, "PlanDefinition", "atrophic-scar-protocol") == 1
    changed: Path = content / "ActivityDefinition" / "cryomassage.json"
    resource = json.loads(changed.read_text())
    resource["description"] += " Reviewed."
    changed.write_text(json.dumps(resource, indent=2))
    with running(app) as client:
        assert _versions(client, "ActivityDefinition", "cryomassage") == 2
        assert client.get("/fhir/ActivityDefinition/cryomassage").json()["description"].endswith("Reviewed.")
        assert _versions(client, "ActivityDefinition", "vacuum-massage") == 1


def test_invalid_content_stops_the_load(tmp_path, database_url):
    from services.catalog.app import canonical_is_unique, make_store
    from services.catalog.content import ContentError
    from services.fhir.db import make_engine

    (tmp_path / "ActivityDefinition").mkdir()
    (tmp_path / "ActivityDefinition" / "broken.json").write_text(json.dumps(
        {"resourceType": "ActivityDefinition", "id": "broken", "status": "published", "kind": "ServiceRequest"}))
    from sqlmodel import Session

    from services.catalog.app import MIGRATIONS

    engine = make_engine(database_url)
    MIGRATIONS.upgrade(engine)
    with Session(engine) as session, pytest.raises(ContentError, match="published"):
        load_content(session, make_store(), tmp_path, CATALOG_TYPES, canonical_is_unique)
    engine.dispose()
