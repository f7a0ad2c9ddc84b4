"""Credentials towards the EHR: none, a static bearer token, or SMART Backend Services.

SMART Backend Services (SMART App Launch 2.2, backend-services.html): the client
signs a short JWT (`iss` = `sub` = client_id, `aud` = the token URL, `exp` at most
five minutes ahead, a fresh `jti`) with its private key (RS384 or ES384, PyJWT over
`cryptography`), posts it as a `client_credentials` grant, and uses the access token
until shortly before it expires. The token URL is configured or read from the EHR's
`.well-known/smart-configuration`, else from its CapabilityStatement (`rest.security`
oauth-uris `token`, the SMART 1.0 way, which older EHRs still use alone). A 401 from
the EHR drops the cached token, and the client asks for a new one once (see `EhrClient`).

Nothing secret is logged: not the key, not the assertion, not the token.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.careplan.delivery.capabilities import read_capabilities
from services.careplan.delivery.errors import EhrRejected

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 240
"""Below the five-minute ceiling, so a few seconds of clock difference never make the EHR refuse it."""
REFRESH_MARGIN_S = 30
"""A cached token is replaced this long before it expires (never sent when about to lapse in flight)."""


class RawSender(Protocol):
    """What auth needs from the EHR client: one HTTP exchange, httpx errors already translated."""

    async def raw(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                  data: dict[str, str] | None = None) -> httpx.Response: ...


class Auth(Protocol):
    """Adds credentials to EHR requests."""

    async def headers(self, http: RawSender) -> dict[str, str]: ...

    def invalidate(self) -> None:
        """The EHR refused the current credentials (401): forget anything cached."""

    @property
    def refreshable(self) -> bool:
        """True when a new credential can be fetched after a 401."""


class NoAuth:
    refreshable = False

    async def headers(self, http: RawSender) -> dict[str, str]:
        return {}

    def invalidate(self) -> None:
        return None


class BearerAuth:
    refreshable = False

    def __init__(self, token: str) -> None:
        self._header = {"Authorization": f"Bearer {token}"}

    async def headers(self, http: RawSender) -> dict[str, str]:
        return self._header

    def invalidate(self) -> None:
        return None


@dataclass(frozen=True)
class SigningKey:
    key: Any
    kid: str
    algorithm: str


def load_signing_key(path: Path, *, kid: str | None, algorithm: str | None) -> SigningKey:
    """The private key from a PEM file or a JWK Set file (the first private key in it, or the one with `kid`)."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        document = json.loads(text)
        keys = document.get("keys", [document])
        chosen = next((k for k in keys if "d" in k and (kid is None or k.get("kid") == kid)), None)
        if chosen is None:
            raise ValueError(f"{path}: no private JWK{f' with kid {kid}' if kid else ''}")
        jwk = jwt.PyJWK(chosen)
        key, kid = jwk.key, kid or chosen.get("kid")
    else:
        key = serialization.load_pem_private_key(text.encode(), password=None)
    if isinstance(key, rsa.RSAPrivateKey):
        derived = "RS384"
    elif isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
        derived = "ES384"
    else:
        raise ValueError(f"{path}: SMART Backend Services needs an RSA key (RS384) or a P-384 EC key (ES384)")
    if algorithm and algorithm != derived:
        raise ValueError(f"{path}: the key signs {derived}, not {algorithm}")
    if not kid:
        raise ValueError("the key id (CAREPLAN_EHR_SMART_KEY_ID) is required with a PEM key: the EHR finds "
                         "the registered public key by it")
    return SigningKey(key=key, kid=kid, algorithm=derived)


class SmartBackendAuth:
    """client_credentials with a private_key_jwt assertion; the access token is cached until near expiry."""

    refreshable = True

    def __init__(self, *, client_id: str, key: SigningKey, scope: str, fhir_base: str,
                 token_url: str | None = None) -> None:
        self.client_id = client_id
        self.key = key
        self.scope = scope
        self.fhir_base = fhir_base.rstrip("/")
        self.token_url = token_url
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    async def headers(self, http: RawSender) -> dict[str, str]:
        async with self._lock:  # one token request at a time, shared by every concurrent delivery
            if self._token is None or time.monotonic() >= self._expires_at - REFRESH_MARGIN_S:
                await self._fetch(http)
        return {"Authorization": f"Bearer {self._token}"}

    def invalidate(self) -> None:
        self._token = None

    def assertion(self, token_url: str) -> str:
        now = int(time.time())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": token_url, "exp": now + ASSERTION_LIFETIME_S,
                  "iat": now, "jti": str(uuid.uuid4())}
        return jwt.encode(claims, self.key.key, algorithm=self.key.algorithm,
                          headers={"kid": self.key.kid, "typ": "JWT"})

    async def _discover(self, http: RawSender) -> str:
        url = f"{self.fhir_base}/.well-known/smart-configuration"
        response = await http.raw("GET", url, headers={"Accept": "application/json"})
        if response.status_code != 200:
            declared = await self._declared_token_url(http)
            if declared:
                return declared
            raise EhrRejected(response.status_code, None, request="GET smart-configuration",
                              message=f"SMART discovery answered {response.status_code}")
        endpoint = response.json().get("token_endpoint")
        if not isinstance(endpoint, str):
            raise EhrRejected(502, None, request="GET smart-configuration",
                              message="the SMART configuration has no token_endpoint")
        return endpoint

    async def _declared_token_url(self, http: RawSender) -> str | None:
        """The token URL the EHR's CapabilityStatement declares (read without credentials, as SMART allows)."""
        response = await http.raw("GET", f"{self.fhir_base}/metadata", headers={"Accept": "application/fhir+json"})
        try:
            statement = response.json() if response.status_code == 200 else None
        except ValueError:
            return None
        return read_capabilities(statement).token_url if isinstance(statement, dict) else None

    async def _fetch(self, http: RawSender) -> None:
        if self.token_url is None:
            self.token_url = await self._discover(http)
        form = {"grant_type": "client_credentials", "scope": self.scope,
                "client_assertion_type": ASSERTION_TYPE, "client_assertion": self.assertion(self.token_url)}
        response = await http.raw("POST", self.token_url, data=form, headers={"Accept": "application/json"})
        if response.status_code != 200:
            error = _oauth_error(response)
            status = response.status_code
            # The authorization server refusing our client is a configuration problem, not a transient one;
            # 5xx and 429 from it are retried like any other.
            raise EhrRejected(status, None, request="POST token",
                              message=f"the token endpoint answered {status} {error}".strip())
        try:
            body = response.json()
            token, lifetime = body["access_token"], float(body.get("expires_in", 300))
        except (ValueError, KeyError, TypeError):
            raise EhrRejected(502, None, request="POST token",
                              message="the token endpoint's answer has no usable access_token") from None
        self._token, self._expires_at = token, time.monotonic() + lifetime


def _oauth_error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return f"{body.get('error', '')}: {body.get('error_description', '')}" if isinstance(body, dict) else ""


def make_auth(settings: Any) -> Auth:
    """The Auth the settings ask for (CAREPLAN_EHR_AUTH); misconfiguration fails at start, not per delivery."""
    if settings.EHR_AUTH == "bearer":
        if not settings.EHR_TOKEN:
            raise ValueError("CAREPLAN_EHR_AUTH=bearer needs CAREPLAN_EHR_TOKEN")
        return BearerAuth(settings.EHR_TOKEN)
    if settings.EHR_AUTH == "smart-backend":
        if not settings.EHR_SMART_CLIENT_ID or not settings.EHR_SMART_KEY_FILE:
            raise ValueError("CAREPLAN_EHR_AUTH=smart-backend needs CAREPLAN_EHR_SMART_CLIENT_ID and "
                             "CAREPLAN_EHR_SMART_KEY_FILE")
        key = load_signing_key(Path(settings.EHR_SMART_KEY_FILE), kid=settings.EHR_SMART_KEY_ID,
                               algorithm=settings.EHR_SMART_ALGORITHM)
        return SmartBackendAuth(client_id=settings.EHR_SMART_CLIENT_ID, key=key, scope=settings.EHR_SMART_SCOPE,
                                fhir_base=settings.EHR_BASE_URL, token_url=settings.EHR_SMART_TOKEN_URL)
    return NoAuth()
