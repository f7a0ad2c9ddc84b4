"""Real FHIR clients against a real catalog server: fhirpy and the SMART `fhirclient` (R4 models).

The catalog runs under uvicorn on a free port in a background thread, once per
backend (SQLite, PostgreSQL), with the shipped content loaded when there is some and
a few ActivityDefinitions of its own, so paging always spans several pages. What the
clients receive is checked by the R4 validator too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import requests
import uvicorn
from fhirclient import client as smart_client
from fhirclient.models.activitydefinition import ActivityDefinition
from fhirclient.models.fhirsearch import FHIRSearch
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound

from tests.catalog.factories import SHIPPED_CONTENT, activity_definition, unique
from tests.support.apps import catalog_app
from tests.support.r4 import R4Validator

PAGE = 4
OWN_ACTIVITIES = 2 * PAGE + 1


@pytest.fixture(scope="module")
def base_url(module_database_url: str) -> Iterator[str]:
    """The FHIR base of a catalog served by uvicorn (port 0: the OS picks a free one)."""
    app = catalog_app(module_database_url) if SHIPPED_CONTENT else catalog_app(module_database_url, content_dir=None)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="catalog-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the catalog server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/fhir"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def fhirpy(base_url: str) -> SyncFHIRClient:
    return SyncFHIRClient(base_url)


@pytest.fixture(scope="module")
def smart(base_url: str) -> smart_client.FHIRClient:
    return smart_client.FHIRClient(settings={"app_id": "cicatrix-tests", "api_base": base_url + "/"})


@pytest.fixture(scope="module")
def own_activities(fhirpy: SyncFHIRClient) -> list[str]:
    """ActivityDefinitions created through fhirpy, so paging spans pages even without shipped content."""
    label = unique("Client")
    created = []
    for i in range(OWN_ACTIVITIES):
        resource = fhirpy.resource("ActivityDefinition", **activity_definition(f"{label}N{i:02d}", title=f"Ü {i}"))
        resource.save()
        created.append(resource.id)
    return created


# ---------------------------------------------------------------------- fhirpy


def test_fhirpy_creates_and_reads_a_resource(fhirpy, own_activities, r4_validator: R4Validator):
    resource = fhirpy.reference("ActivityDefinition", own_activities[0]).to_resource()
    r4_validator.assert_valid(resource.serialize())
    assert resource.id == own_activities[0] and resource["meta"]["versionId"] == "1"


def test_fhirpy_searches_with_fhir_semantics(fhirpy, own_activities, r4_validator: R4Validator):
    found = fhirpy.resources("ActivityDefinition").search(title="u 3").fetch()
    assert [r.id for r in found] == [own_activities[3]]
    for resource in found:
        r4_validator.assert_valid(resource.serialize())


def test_fhirpy_pages_through_every_activity_definition(fhirpy, own_activities, r4_validator: R4Validator):
    everything = fhirpy.resources("ActivityDefinition").sort("name").limit(PAGE).fetch_all()
    ids = [r.id for r in everything]
    assert len(ids) == len(set(ids)) == fhirpy.resources("ActivityDefinition").count()
    assert set(own_activities) <= set(ids)
    names = [r["name"] for r in everything]
    assert names == sorted(names, key=str.casefold)
    for resource in everything:
        r4_validator.assert_valid(resource.serialize())


def test_fhirpy_sees_errors_as_operation_outcomes(fhirpy):
    with pytest.raises(ResourceNotFound):
        fhirpy.reference("ActivityDefinition", "no-such-thing").to_resource()
    with pytest.raises(OperationOutcome):
        fhirpy.resources("ActivityDefinition").search(_count="lots").fetch()


def test_fhirpy_calls_the_terminology_operations(fhirpy, r4_validator: R4Validator):
    if not SHIPPED_CONTENT:
        pytest.skip("no shipped content yet")
    value_set = fhirpy.resources("ValueSet").search(url="https://fhir.cicatrix.org/ValueSet/scar-type").first()
    assert value_set is not None
    expanded = fhirpy.resources("ValueSet").execute("$expand", method="get", params={"url": value_set["url"]})
    r4_validator.assert_valid(expanded)
    assert expanded["expansion"]["total"] == len(expanded["expansion"]["contains"]) > 0


# ---------------------------------------------------------------------- fhirclient (SMART on FHIR)


def test_fhirclient_parses_the_capability_statement(smart):
    smart.server.get_capability(force=True)
    statement = smart.server.capabilityStatement
    assert statement.fhirVersion == "4.0.1"
    served = {resource.type for resource in statement.rest[0].resource}
    assert {"ActivityDefinition", "PlanDefinition", "ValueSet", "CodeSystem"} <= served


def test_fhirclient_reads_a_resource_into_its_r4_model(smart, own_activities, r4_validator: R4Validator):
    resource = ActivityDefinition.read(own_activities[1], smart.server)
    assert resource.id == own_activities[1] and resource.status == "active"
    r4_validator.assert_valid(resource.as_json())


def test_fhirclient_searches_and_pages_through_every_activity_definition(
        smart, own_activities, base_url, r4_validator: R4Validator):
    search = FHIRSearch(ActivityDefinition, {"_count": str(PAGE), "_sort": "-_lastUpdated"})
    pages = list(search.perform_iter(smart.server))
    assert len(pages) >= 3
    resources = [entry.resource for page in pages for entry in page.entry or []]
    ids = [r.id for r in resources]
    total = requests.get(f"{base_url}/ActivityDefinition", params={"_summary": "count"}, timeout=10).json()["total"]
    assert len(ids) == len(set(ids)) == total
    assert set(own_activities) <= set(ids)
    for resource in resources:
        assert isinstance(resource, ActivityDefinition)
        r4_validator.assert_valid(resource.as_json())


def test_fhirclient_where_search_with_a_modifier(smart, own_activities):
    found = list(ActivityDefinition.where(struct={"title:contains": "ü 5"}).perform_resources_iter(smart.server))
    assert [r.id for r in found] == [own_activities[5]]
