"""Credentials towards the EHR: static bearer, SMART Backend Services (PEM or JWKS key), refresh on 401."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from services.careplan.delivery.dispatcher import Dispatcher, run_until_idle
from tests.delivery.conftest import deliveries, delivery_settings, drain, identifiers_in_ehr
from tests.delivery.factories import store_plan
from tests.delivery.keys import ec_key, private_jwk, public_jwk, rsa_key, write_jwks, write_pem

pytestmark = pytest.mark.sandbox

CLIENT = "cicatrix-careplan"


def paths(sandbox) -> list[tuple[str, str, int | None]]:
    return [(r["method"], r["path"], r["status"]) for r in sandbox.requests()]


def test_static_bearer_token(engine, database_url, ehr_sandbox):
    ehr_sandbox.configure(token="s3cret")
    plan = store_plan(engine)

    drain(delivery_settings(database_url, ehr_sandbox.base_url, EHR_AUTH="bearer", EHR_TOKEN="s3cret"), engine)

    assert identifiers_in_ehr(ehr_sandbox) == [plan.id]
    assert all(r["headers"].get("authorization") == "Bearer" for r in ehr_sandbox.requests()
               if r["path"] != "/fhir/metadata")


def test_smart_backend_with_a_pem_key_discovers_the_token_url(engine, database_url, ehr_sandbox, tmp_path):
    key = rsa_key()
    ehr_sandbox.configure(smart={"clientId": CLIENT, "jwks": {"keys": [public_jwk(key, "pem-1")]}})
    plan = store_plan(engine)
    settings = delivery_settings(database_url, ehr_sandbox.base_url, EHR_AUTH="smart-backend",
                                 EHR_SMART_CLIENT_ID=CLIENT, EHR_SMART_KEY_FILE=write_pem(key, tmp_path / "k.pem"),
                                 EHR_SMART_KEY_ID="pem-1")

    drain(settings, engine)

    assert identifiers_in_ehr(ehr_sandbox) == [plan.id]
    log = paths(ehr_sandbox)
    assert ("GET", "/fhir/.well-known/smart-configuration", 200) in log
    assert [p for p in log if p[1] == "/auth/token"] == [("POST", "/auth/token", 200)]
    token_request = next(r for r in ehr_sandbox.requests() if r["path"] == "/auth/token")
    assert "client_credentials" in token_request["body"] and "system%2FCarePlan.crus" in token_request["body"]


def test_expired_token_gets_401_then_one_refresh_then_success(engine, database_url, ehr_sandbox, tmp_path):
    key = ec_key()
    ehr_sandbox.configure(smart={"clientId": CLIENT, "jwks": {"keys": [public_jwk(key, "ec-1")]}})
    token_url = f"{ehr_sandbox.root_url}/auth/token"
    settings = delivery_settings(database_url, ehr_sandbox.base_url, EHR_AUTH="smart-backend",
                                 EHR_SMART_CLIENT_ID=CLIENT, EHR_SMART_TOKEN_URL=token_url,
                                 EHR_SMART_KEY_FILE=write_jwks([private_jwk(key, "ec-1")], tmp_path / "jwks.json"))
    first = store_plan(engine)

    async def go() -> None:
        dispatcher = Dispatcher(settings, engine)
        try:
            await run_until_idle(dispatcher, 15)
            assert httpx.delete(f"{ehr_sandbox.control_url}/tokens").json() == {"revoked": 1}  # token "expires"
            ehr_sandbox.clear_requests()
            await asyncio.to_thread(store_plan, engine)
            await run_until_idle(dispatcher, 15)
        finally:
            await dispatcher.close()

    asyncio.run(go())

    assert [p for p in paths(ehr_sandbox) if p[0] == "POST"] == [
        ("POST", "/fhir", 401), ("POST", "/auth/token", 200), ("POST", "/fhir", 200)]
    assert sorted(identifiers_in_ehr(ehr_sandbox)) == sorted([first.id, deliveries(engine)[1].careplan_id])
    assert all(d.state == "completed" and d.attempts == 1 for d in deliveries(engine))


def test_an_unregistered_key_fails_the_delivery_visibly(engine, database_url, ehr_sandbox, tmp_path):
    ehr_sandbox.configure(smart={"clientId": CLIENT, "jwks": {"keys": [public_jwk(rsa_key(), "k")]}})
    store_plan(engine)
    settings = delivery_settings(database_url, ehr_sandbox.base_url, EHR_AUTH="smart-backend",
                                 EHR_SMART_CLIENT_ID=CLIENT, EHR_SMART_KEY_ID="k",
                                 EHR_SMART_KEY_FILE=write_pem(rsa_key(), tmp_path / "other.pem"))

    drain(settings, engine)

    [delivery] = deliveries(engine)
    assert delivery.state == "failed"
    assert "invalid_client" in delivery.last_error
    assert ehr_sandbox.store("CarePlan") == []
