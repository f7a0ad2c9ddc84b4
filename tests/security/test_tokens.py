"""Token verification: what makes a JWT acceptable, and every way it is not (services/fhir/tokens.py)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.fhir.tokens import InvalidToken, JwksSource, KeysUnavailable, TokenPolicy, TokenVerifier
from tests.security.issuer import AUDIENCE, ISSUER, Issuer

ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})


def verifier(issuer: Issuer, tmp_path, **policy) -> TokenVerifier:
    settings = {"issuer": ISSUER, "audiences": (AUDIENCE,), "algorithms": ALGORITHMS, "leeway_seconds": 30} | policy
    return TokenVerifier(TokenPolicy(**settings), JwksSource(file=issuer.write_jwks(tmp_path)))


def verify(v: TokenVerifier, token: str) -> dict:
    return asyncio.run(v.verify(token))


def refused(v: TokenVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as info:
        verify(v, token)
    return str(info.value)


def unsigned(claims: dict, header: dict) -> str:
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")
    return f"{part(header)}.{part(claims)}."


def test_a_token_signed_by_the_issuer_with_rs384_or_es384_is_accepted(issuer, tmp_path):
    v = verifier(issuer, tmp_path)
    assert verify(v, issuer.token("system/CarePlan.rs"))["scope"] == "system/CarePlan.rs"
    assert verify(v, issuer.token("system/CarePlan.rs", alg="ES384"))["sub"] == "clinician-7"


def test_a_token_without_kid_is_checked_against_the_only_suitable_key(issuer, tmp_path):
    assert verify(verifier(issuer, tmp_path), issuer.token("x", kid=""))["iss"] == ISSUER


def test_alg_none_is_refused(issuer, tmp_path):
    token = unsigned(issuer.claims("system/*.cruds"), {"alg": "none", "typ": "JWT", "kid": "rsa-1"})
    assert "not accepted" in refused(verifier(issuer, tmp_path), token)


def test_hs256_signed_with_the_public_key_is_refused(issuer, tmp_path):
    """The algorithm-confusion attack: the public key (known to all) used as an HMAC secret."""
    public_pem = issuer.rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode()).rstrip(b"=")
    payload = base64.urlsafe_b64encode(json.dumps(issuer.claims("system/*.cruds")).encode()).rstrip(b"=")
    signature = base64.urlsafe_b64encode(hmac.new(public_pem, header + b"." + payload, hashlib.sha256).digest())
    token = (header + b"." + payload + b"." + signature.rstrip(b"=")).decode()
    assert "not accepted" in refused(verifier(issuer, tmp_path), token)


def test_an_algorithm_outside_the_allow_list_is_refused_even_when_the_signature_is_good(issuer, tmp_path):
    v = verifier(issuer, tmp_path, algorithms=frozenset({"ES384"}))
    assert "not accepted" in refused(v, issuer.token("x", alg="RS384"))


def test_a_key_verifies_only_its_own_algorithm_family_and_curve(issuer, tmp_path):
    v = verifier(issuer, tmp_path)
    # the RSA key's JWK says RS384: a PS384 token under that kid is refused although the key could verify it
    assert "not signed by a key" in refused(v, issuer.token("x", alg="PS384", kid="rsa-1"))
    # an ES256 signature (P-256) under the P-384 key's kid
    other_curve = ec.generate_private_key(ec.SECP256R1())
    assert "not signed by a key" in refused(v, issuer.token("x", alg="ES256", kid="ec-1", key=other_curve))


def test_a_token_signed_by_another_key_is_refused(issuer, tmp_path):
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert "signature" in refused(verifier(issuer, tmp_path), issuer.token("x", key=stranger))


def test_an_unknown_kid_is_refused(issuer, tmp_path):
    assert "not signed by a key" in refused(verifier(issuer, tmp_path), issuer.token("x", kid="rotated-away"))


@pytest.mark.parametrize(("claims", "message"), [
    ({"exp": -120}, "expired"),
    ({"nbf": +120}, "not valid yet"),
    ({"iss": "https://evil.test"}, "another issuer"),
    ({"aud": "https://other-service.test/fhir"}, "not meant for this service"),
    ({"exp": None}, "no exp claim"),
    ({"aud": None}, "no aud claim"),
    ({"iss": None}, "no iss claim"),
])
def test_claims_are_checked(issuer, tmp_path, claims, message):
    """Times are given relative to now (parameters are made at collection, long before the test runs)."""
    now = int(time.time())
    claims = {k: now + v if k in ("exp", "nbf") and v is not None else v for k, v in claims.items()}
    assert message in refused(verifier(issuer, tmp_path), issuer.token("x", **claims))


def test_a_small_clock_skew_is_tolerated(issuer, tmp_path):
    now = int(time.time())
    v = verifier(issuer, tmp_path)
    assert verify(v, issuer.token("x", exp=now - 10, nbf=now + 10, iat=now + 10))


def test_one_of_several_audiences_is_enough(issuer, tmp_path):
    v = verifier(issuer, tmp_path, audiences=("https://a.test", AUDIENCE))
    assert verify(v, issuer.token("x", aud=["https://elsewhere.test", AUDIENCE]))


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "eyJhbGciOiJSUzM4NCJ9.e30.", "x" * 20000])
def test_garbage_is_refused(issuer, tmp_path, token):
    refused(verifier(issuer, tmp_path), token)


def test_the_jwks_url_is_fetched_once_cached_and_refetched_for_a_new_kid(issuer):
    """Key rotation: a token with a kid the cache does not know makes the source fetch the key set again."""
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    served = {"jwks": issuer.jwks}
    fetches = []

    def handler(request: httpx.Request) -> httpx.Response:
        fetches.append(request.url)
        return httpx.Response(200, json=served["jwks"])

    source = JwksSource(url="https://auth.hospital.test/jwks", transport=httpx.MockTransport(handler))
    v = TokenVerifier(TokenPolicy(ISSUER, (AUDIENCE,), ALGORITHMS), source)

    async def scenario() -> None:
        await v.verify(issuer.token("x"))
        await v.verify(issuer.token("x"))
        assert len(fetches) == 1, "the key set is cached"
        new_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rotated.public_key()))
        served["jwks"] = {"keys": [*issuer.jwks["keys"], new_jwk | {"kid": "rsa-2", "alg": "RS384"}]}
        source._fetched -= 60  # the last fetch was a while ago (refetches are rate-limited)
        await v.verify(issuer.token("x", kid="rsa-2", key=rotated))
        assert len(fetches) == 2
        with pytest.raises(InvalidToken):
            await v.verify(issuer.token("x", kid="unknown-kid"))
        assert len(fetches) == 2, "unknown kids cannot make the service hammer the issuer"

    asyncio.run(scenario())


def test_an_unreachable_jwks_url_without_cached_keys_is_keys_unavailable(issuer):
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    source = JwksSource(url="https://auth.hospital.test/jwks", transport=httpx.MockTransport(handler))
    with pytest.raises(KeysUnavailable):
        asyncio.run(TokenVerifier(TokenPolicy(ISSUER, (AUDIENCE,), ALGORITHMS), source).verify(issuer.token("x")))
