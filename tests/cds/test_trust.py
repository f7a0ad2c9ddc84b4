"""Trusting CDS Clients: the EHR's JWT on every call — trusted issuer, this endpoint as audience, unexpired,
never replayed, keys from configuration or from an allow-listed `jku` only."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from services.careplan.cds.trust import ReplayCache
from services.careplan.settings import CareplanSettings
from services.fhir.auth import InsecureExposure
from services.fhir.outcome import ServiceUnavailable
from tests.cds.conftest import cds_settings
from tests.cds.support import BASE_URL, hook_body
from tests.security.issuer import Issuer
from tests.support.apps import careplan_app, running
from tests.support.servers import serve

PATH = "/cds-services/scar-plan"


def refused(ehr, token: str) -> str:
    response = ehr.call("scar-plan", hook_body("patient-view", {}), token=token)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    return response.json()["issue"][0]["diagnostics"]


def test_a_valid_jwt_is_accepted(ehr):
    assert ehr.call("scar-plan", hook_body("patient-view", {}), token=ehr.token(PATH)).status_code == 200


def test_a_jwt_from_an_untrusted_issuer_is_401(ehr):
    other = Issuer(issuer="https://rogue.example")
    token = other.token(alg="ES384", aud=BASE_URL + PATH, jti=str(uuid.uuid4()))
    assert "signature" in refused(ehr, token)  # the same kid, another key
    assert "issuer" in refused(ehr, ehr.token(PATH, iss="https://rogue.example"))


def test_a_jwt_for_another_endpoint_is_401(ehr):
    assert "aud" in refused(ehr, ehr.token("/cds-services/scar-order-safety"))
    assert "aud" in refused(ehr, ehr.token(PATH, aud="https://elsewhere.example/cds-services/scar-plan"))


def test_a_replayed_jti_is_401(ehr):
    token = ehr.token(PATH)
    assert ehr.call("scar-plan", hook_body("patient-view", {}), token=token).status_code == 200
    assert "replay" in refused(ehr, token)


def test_an_expired_jwt_is_401(ehr):
    now = int(time.time())
    assert "expired" in refused(ehr, ehr.token(PATH, iat=now - 600, exp=now - 300))


@pytest.mark.parametrize("missing", ["jti", "iat", "exp"])
def test_a_jwt_without_a_required_claim_is_401(ehr, missing):
    assert missing in refused(ehr, ehr.token(PATH, **{missing: None}))


def test_a_jwt_living_longer_than_allowed_is_401(ehr):
    now = int(time.time())
    assert "longer than" in refused(ehr, ehr.token(PATH, iat=now, exp=now + 3600))


def test_an_unsigned_or_hmac_jwt_is_401(ehr):
    claims = ehr.issuer.claims("", aud=BASE_URL + PATH, jti=str(uuid.uuid4()))
    assert "not accepted" in refused(ehr, jwt.encode(claims, "shared-secret-of-32-bytes-or-more!!", algorithm="HS256"))
    assert "not accepted" in refused(ehr, jwt.encode(claims, None, algorithm="none"))


def test_a_jku_that_is_not_allow_listed_is_401_and_never_fetched(ehr):
    fetched = []
    trap = FastAPI()

    @trap.get("/jwks")
    def jwks() -> dict:
        fetched.append(1)
        return ehr.issuer.jwks

    with serve(trap) as url:
        token = ehr.issuer.token(alg="ES384", aud=BASE_URL + PATH, jti=str(uuid.uuid4()),
                                 headers={"jku": f"{url}/jwks"})
        assert "jku" in refused(ehr, token)
    assert fetched == []


def test_keys_come_from_an_allow_listed_jku(catalog_url, shapes, tmp_path):
    issuer = Issuer(issuer="https://ehr2.hospital.test")
    keys = FastAPI()

    @keys.get("/jwks")
    def jwks() -> dict:
        return issuer.jwks

    with serve(keys) as url:
        settings = cds_settings(issuer, tmp_path) | {"CDS_JWKS_FILE": None, "CDS_JWKS_URL": f"{url}/jwks"}
        app = careplan_app(f"sqlite:///{tmp_path}/careplan.db", CATALOG_URL=catalog_url, **settings)
        with running(app) as client:
            token = issuer.token(alg="ES384", aud=BASE_URL + PATH, jti=str(uuid.uuid4()),
                                 headers={"jku": f"{url}/jwks"})
            response = client.post(PATH, json=hook_body("patient-view", {}),
                                   headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text


def test_the_replay_cache_forgets_expired_tokens_and_refuses_when_full_of_live_ones():
    cache = ReplayCache(capacity=2)
    assert cache.remember("iss", "a", expires=100.0, now=0.0)
    assert not cache.remember("iss", "a", expires=100.0, now=1.0)
    assert cache.remember("other-iss", "a", expires=100.0, now=1.0)
    with pytest.raises(ServiceUnavailable):
        cache.remember("iss", "b", expires=100.0, now=2.0)
    assert cache.remember("iss", "b", expires=300.0, now=150.0)  # both earlier entries expired and were dropped
    assert cache.remember("iss", "a", expires=300.0, now=150.0)


def test_cds_jwt_mode_needs_an_issuer_and_keys():
    with pytest.raises(ValidationError, match="CAREPLAN_CDS_ISSUER"):
        CareplanSettings(CDS_AUTH="jwt", CDS_JWKS_URL="https://ehr.example/jwks")
    with pytest.raises(ValidationError, match="CAREPLAN_CDS_JWKS_FILE or CAREPLAN_CDS_JWKS_URL"):
        CareplanSettings(CDS_AUTH="jwt", CDS_ISSUER="https://ehr.example")


def test_cds_auth_off_refuses_to_start_beyond_loopback(tmp_path, catalog_url):
    app = careplan_app(f"sqlite:///{tmp_path}/careplan.db", CATALOG_URL=catalog_url, HOST="0.0.0.0",
                       AUTH_MODE="jwt", AUTH_ISSUER="https://idp.example", AUTH_AUDIENCE="x",
                       AUTH_JWKS_URL="https://idp.example/jwks", DISPATCHER="off")
    with pytest.raises(InsecureExposure, match="CAREPLAN_CDS_AUTH=off"), running(app):
        pass


def test_cds_calls_are_not_subject_to_the_fhir_apis_own_tokens(catalog_url, ehr_issuer, tmp_path):
    """With the FHIR API in jwt mode, an EHR's CDS JWT still reaches /cds-services (and only there)."""
    api = Issuer()
    (tmp_path / "api").mkdir()
    settings = cds_settings(ehr_issuer, tmp_path) | api.settings(api.write_jwks(tmp_path / "api"))
    app = careplan_app(f"sqlite:///{tmp_path}/careplan.db", CATALOG_URL=catalog_url, **settings)
    with running(app) as client:
        token = ehr_issuer.token(alg="ES384", aud=BASE_URL + PATH, jti=str(uuid.uuid4()))
        assert client.post(PATH, json=hook_body("patient-view", {}),
                           headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert client.get("/fhir/CarePlan", headers={"Authorization": f"Bearer {token}"}).status_code == 401
