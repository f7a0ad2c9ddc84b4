"""The sandbox's SMART Backend Services token endpoint checks what a real authorization server checks."""

from __future__ import annotations

import time
import uuid

import httpx
import jwt
import pytest

from tests.delivery.keys import ec_key, public_jwk, rsa_key, write_jwks
from tests.support.sandbox import EhrSandbox, start_sandbox, stop_sandbox

pytestmark = pytest.mark.sandbox

CLIENT = "cicatrix-careplan"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture(scope="module")
def keys():
    return {"rsa": rsa_key(), "ec": ec_key(), "other": rsa_key()}


@pytest.fixture
def smart(ehr_sandbox, keys):
    ehr_sandbox.configure(smart={"clientId": CLIENT, "jwks": {"keys": [public_jwk(keys["rsa"], "rsa-1"),
                                                                      public_jwk(keys["ec"], "ec-1")]}})
    return ehr_sandbox


def token_url(sandbox) -> str:
    return httpx.get(f"{sandbox.base_url}/.well-known/smart-configuration").json()["token_endpoint"]


def assertion(key, kid: str, aud: str, *, alg: str = "RS384", **claims) -> str:
    now = int(time.time())
    body = {"iss": CLIENT, "sub": CLIENT, "aud": aud, "exp": now + 240, "jti": str(uuid.uuid4())} | claims
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def ask(url: str, signed: str, **form) -> httpx.Response:
    return httpx.post(url, data={"grant_type": "client_credentials", "scope": "system/CarePlan.crus",
                                 "client_assertion_type": ASSERTION_TYPE, "client_assertion": signed} | form)


def test_discovery_is_open_and_names_the_token_endpoint(smart):
    document = httpx.get(f"{smart.base_url}/.well-known/smart-configuration")

    assert document.status_code == 200
    assert document.json()["token_endpoint"] == f"{smart.root_url}/auth/token"
    assert set(document.json()["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
    metadata = httpx.get(f"{smart.base_url}/metadata").json()
    assert metadata["rest"][0]["security"]["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"


@pytest.mark.parametrize("kind, kid, alg", [("rsa", "rsa-1", "RS384"), ("ec", "ec-1", "ES384")])
def test_a_valid_assertion_gets_a_token_the_fhir_api_accepts(smart, keys, kind, kid, alg):
    url = token_url(smart)
    assert httpx.get(f"{smart.base_url}/CarePlan").status_code == 401

    answer = ask(url, assertion(keys[kind], kid, url, alg=alg))

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 300 and body["scope"] == "system/CarePlan.crus"
    assert answer.headers["cache-control"] == "no-store"
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert httpx.get(f"{smart.base_url}/CarePlan", headers=headers).status_code == 200


@pytest.mark.parametrize("case", ["replayed-jti", "wrong-aud", "exp-too-far", "expired", "wrong-key", "unknown-kid",
                                  "rs256", "wrong-iss"])
def test_bad_assertions_are_invalid_client(smart, keys, case):
    url = token_url(smart)
    jti = str(uuid.uuid4())
    now = int(time.time())
    signed = {
        "replayed-jti": lambda: assertion(keys["rsa"], "rsa-1", url, jti=jti),
        "wrong-aud": lambda: assertion(keys["rsa"], "rsa-1", f"{smart.base_url}/metadata"),
        "exp-too-far": lambda: assertion(keys["rsa"], "rsa-1", url, exp=now + 600),
        "expired": lambda: assertion(keys["rsa"], "rsa-1", url, exp=now - 5),
        "wrong-key": lambda: assertion(keys["other"], "rsa-1", url),
        "unknown-kid": lambda: assertion(keys["rsa"], "nope", url),
        "rs256": lambda: assertion(keys["rsa"], "rsa-1", url, alg="RS256"),
        "wrong-iss": lambda: assertion(keys["rsa"], "rsa-1", url, iss="someone-else"),
    }[case]()
    if case == "replayed-jti":
        assert ask(url, signed).status_code == 200

    answer = ask(url, signed)

    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_client"


def test_revoked_tokens_are_refused_like_expired_ones(smart, keys):
    url = token_url(smart)
    token = ask(url, assertion(keys["rsa"], "rsa-1", url)).json()["access_token"]
    assert httpx.delete(f"{smart.control_url}/tokens").json() == {"revoked": 1}

    answer = httpx.get(f"{smart.base_url}/CarePlan", headers={"Authorization": f"Bearer {token}"})

    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]


def test_private_keys_are_refused_as_registered_keys(ehr_sandbox, keys):
    from tests.delivery.keys import private_jwk

    answer = httpx.post(f"{ehr_sandbox.control_url}/config",
                        json={"smart": {"clientId": CLIENT, "jwks": {"keys": [private_jwk(keys["rsa"], "k")]}}})

    assert answer.status_code == 400 and "private key" in answer.json()["error"]


def test_profile_and_smart_come_from_the_environment(tmp_path, keys):
    jwks = write_jwks([public_jwk(keys["ec"], "ec-1")], tmp_path / "jwks.json")
    proc = start_sandbox(env={"EHR_SANDBOX_SMART_CLIENT_ID": CLIENT, "EHR_SANDBOX_SMART_JWKS": str(jwks),
                              "EHR_SANDBOX_PROFILE": "no-transaction"})
    sandbox = EhrSandbox(proc)
    try:
        sandbox.reset()
        config = sandbox.configure()
        assert config["profile"] == "no-transaction" and config["smart"]["clientId"] == CLIENT
        url = token_url(sandbox)
        assert ask(url, assertion(keys["ec"], "ec-1", url, alg="ES384")).status_code == 200
        rest = httpx.get(f"{proc.base_url}/metadata").json()["rest"][0]
        assert {i["code"] for i in rest["interaction"]} == {"batch"}
    finally:
        sandbox.close()
        stop_sandbox(proc)
