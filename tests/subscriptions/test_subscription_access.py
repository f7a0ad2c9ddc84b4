"""Who may subscribe to what: Subscription.c, patient/ scopes, and the read access full-resource payloads need."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.security.issuer import Issuer
from tests.subscriptions.conftest import JSON, QUICK, row, subscription
from tests.support.apps import careplan_app, running


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
def secured(database_url: str, issuer: Issuer, tmp_path, receiver) -> Iterator[TestClient]:
    app = careplan_app(database_url, SUBSCRIPTION_ENDPOINTS=receiver.base, **QUICK,
                       **issuer.settings(issuer.write_jwks(tmp_path)))
    with running(app) as client:
        yield client


def create(client: TestClient, issuer: Issuer, scope: str, resource: dict[str, Any], **claims: Any):
    return client.post("/fhir/Subscription", json=resource, headers=JSON | issuer.bearer(scope, **claims))


def test_creating_a_subscription_needs_subscription_c(secured, issuer, receiver, r4_validator):
    resource = subscription("careplan-created", receiver.url())
    refused = create(secured, issuer, "system/Subscription.rs system/CarePlan.r", resource)
    assert refused.status_code == 403
    r4_validator.assert_valid(refused.json())
    assert "system/Subscription.c" in refused.json()["issue"][0]["diagnostics"]
    assert create(secured, issuer, "system/Subscription.c", resource).status_code == 201


def test_a_patient_scope_limits_the_subscription_to_its_patient(secured, issuer, receiver, engine, r4_validator):
    scope = "patient/Subscription.crs"
    own = create(secured, issuer, scope, subscription("careplan-created", receiver.url()), patient="p1")
    assert own.status_code == 201, own.text
    assert row(engine, own.json()["id"]).filter_patient == "Patient/p1"
    other = create(secured, issuer, scope, subscription("careplan-created", receiver.url(),
                                                         filters="CarePlan?patient=Patient/p2"), patient="p1")
    assert other.status_code == 403
    r4_validator.assert_valid(other.json())
    elsewhere = create(secured, issuer, "system/Subscription.c", subscription("careplan-created", receiver.url()))
    mine = secured.get("/fhir/Subscription", headers=issuer.bearer(scope, patient="p1")).json()
    assert [e["resource"]["id"] for e in mine["entry"]] == [own.json()["id"]]
    assert secured.get(f"/fhir/Subscription/{elsewhere.json()['id']}",
                       headers=issuer.bearer(scope, patient="p1")).status_code == 403
    assert secured.get(f"/fhir/Subscription/{own.json()['id']}/$status",
                       headers=issuer.bearer(scope, patient="p1")).status_code == 200


def test_full_resource_payloads_need_read_access_to_what_they_carry(secured, issuer, receiver, r4_validator):
    resource = subscription("careplan-delivery-failed", receiver.url(), content="full-resource")
    refused = create(secured, issuer, "system/Subscription.c system/CarePlan.r", resource)
    assert refused.status_code == 403
    r4_validator.assert_valid(refused.json())
    assert "system/Task.r" in refused.json()["issue"][0]["diagnostics"]
    assert create(secured, issuer, "system/Subscription.c system/Task.r", resource).status_code == 201
    assert create(secured, issuer, "system/Subscription.c",
                  subscription("careplan-delivery-failed", receiver.url(), content="id-only")).status_code == 201
