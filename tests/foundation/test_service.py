"""Both apps: capabilities, health, readiness, metrics and migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging

import pytest
from sqlalchemy import inspect

from services.careplan.app import MIGRATIONS as CAREPLAN_MIGRATIONS
from services.catalog.app import MIGRATIONS as CATALOG_MIGRATIONS
from services.fhir.db import make_engine
from tests.support.apps import careplan_app, catalog_app, running

SERVICES = ["catalog", "careplan"]


def make(service: str, database_url: str, **settings: object):
    if service == "catalog":
        return catalog_app(database_url, content_dir=None, **settings)
    return careplan_app(database_url, **settings)


@pytest.mark.parametrize("service", SERVICES)
def test_metadata_is_a_valid_r4_capability_statement(service, database_url, r4_validator):
    with running(make(service, database_url)) as client:
        response = client.get("/fhir/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/fhir+json; charset=utf-8"
    assert response.headers["etag"].startswith('W/"')
    statement = response.json()
    r4_validator.assert_valid(statement)
    assert statement["fhirVersion"] == "4.0.1"
    assert statement["kind"] == "instance"
    assert statement["rest"][0]["resource"], "a service must declare the resources it serves"


def test_catalog_capability_lists_exactly_the_served_types(database_url):
    with running(make("catalog", database_url)) as client:
        statement = client.get("/fhir/metadata").json()
        types = {r["type"] for r in statement["rest"][0]["resource"]}
        assert types == {"ActivityDefinition", "PlanDefinition", "Medication", "MedicationKnowledge",
                         "Questionnaire", "CodeSystem", "ValueSet", "StructureDefinition"}
        for resource in statement["rest"][0]["resource"]:
            assert client.get(f"/fhir/{resource['type']}").status_code == 200
        assert client.get("/fhir/Patient").status_code == 404


@pytest.mark.parametrize("service", SERVICES)
def test_health_and_readiness(service, database_url):
    with running(make(service, database_url)) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready", "service": service}


@pytest.mark.parametrize("service", SERVICES)
def test_readiness_fails_until_migrations_are_applied(service, database_url, r4_validator):
    with running(make(service, database_url, AUTO_MIGRATE=False)) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        r4_validator.assert_valid(response.json())
        assert "cicatrix migrate" in response.json()["issue"][0]["diagnostics"]
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("service", SERVICES)
def test_metrics_count_requests_by_route_and_status(service, tmp_path):
    with running(make(service, f"sqlite:///{tmp_path}/m.db")) as client:
        client.get("/fhir/metadata")
        client.get("/fhir/metadata")
        client.get("/no/such/thing")
        text = client.get("/metrics").text
    assert f'http_requests_total{{method="GET",route="/fhir/metadata",service="{service}",status="200"}} 2.0' in text
    assert f'route="unmatched",service="{service}",status="404"' in text
    assert "http_request_duration_seconds_bucket" in text


def test_metrics_expose_what_prometheus_client_would():
    """The counts kept by the service are exposed as prometheus_client's own Counter and Histogram expose the same
    observations (a duration on a bucket's bound counts in that bucket)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from services.fhir.observability import LATENCY_BUCKETS, HttpMetrics

    ours = HttpMetrics("catalog")
    registry = CollectorRegistry()
    requests = Counter("http_requests_total", "HTTP requests answered", ["service", "method", "route", "status"],
                       registry=registry)
    latency = Histogram("http_request_duration_seconds", "Time to answer an HTTP request",
                        ["service", "method", "route"], buckets=LATENCY_BUCKETS, registry=registry)
    for method, route, status, seconds in [("GET", "/fhir/{resource_type}/{resource_id}", 200, 0.0004),
                                           ("GET", "/fhir/{resource_type}/{resource_id}", 200, 0.001),
                                           ("GET", "/fhir/{resource_type}/{resource_id}", 304, 0.0025),
                                           ("POST", "/fhir/CarePlan/$generate", 201, 0.07),
                                           ("GET", "unmatched", 404, 12.5)]:
        ours.observe(method, route, status, seconds)
        requests.labels("catalog", method, route, str(status)).inc()
        latency.labels("catalog", method, route).observe(seconds)
    expected = [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]
    assert sorted(generate_latest(ours.registry).decode().splitlines()) == sorted(expected)


def test_metrics_count_invented_methods_as_one_series(tmp_path):
    """A server on h11 passes any token as the method: each must not become a series of its own."""
    with running(make("catalog", f"sqlite:///{tmp_path}/m.db")) as client:
        for n in range(50):
            client.request(f"BREW{n}", "/fhir/metadata")
        text = client.get("/metrics").text
    assert "BREW" not in text
    assert 'http_requests_total{method="_OTHER",route="/fhir/metadata",service="catalog",status="405"} 50.0' in text


def test_both_services_migrate_into_one_database_without_collisions(database_url):
    engine = make_engine(database_url)
    CATALOG_MIGRATIONS.upgrade(engine)
    CAREPLAN_MIGRATIONS.upgrade(engine)
    CATALOG_MIGRATIONS.upgrade(engine)  # idempotent
    tables = set(inspect(engine).get_table_names())
    assert {"catalog_resource", "careplan_resource", "catalog_alembic_version",
            "careplan_alembic_version"} <= tables
    assert CATALOG_MIGRATIONS.is_current(engine) and CAREPLAN_MIGRATIONS.is_current(engine)
    engine.dispose()


def test_logs_are_json_lines_with_the_request_id(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cicatrix.access")
    with running(make("careplan", f"sqlite:///{tmp_path}/l.db")) as client:
        client.get("/fhir/CarePlan?subject=Patient/jane-doe-1980", headers={"x-request-id": "req-42"})
    records = [r for r in caplog.records if r.name == "cicatrix.access"]
    assert records
    from services.fhir.observability import JsonFormatter

    line = json.loads(JsonFormatter().format(records[-1]))
    assert line["route"] == "/fhir/{resource_type}" and line["status"] == 200
    assert line["request_id"] == "req-42"
    assert "jane-doe" not in json.dumps(line), "query strings (patient ids) must not be logged"


def test_startup_moves_the_startup_heap_out_of_the_collector(tmp_path):
    import gc

    with running(make("catalog", f"sqlite:///{tmp_path}/g.db")) as client:
        assert client.get("/readyz").status_code == 200
        assert gc.get_freeze_count() > 100_000, "modules, models and the app are frozen once started"
