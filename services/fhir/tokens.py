"""Access-token verification: signed JWTs checked against the issuer's JSON Web Key Set.

PyJWT does the cryptography; this module decides what is acceptable:

- the header's `alg` must be in the configured allow-list, which only ever holds
  public-key algorithms (settings refuse `none` and HS*), and must suit the key:
  RSA keys verify RS*/PS*, EC keys ES* on their own curve, OKP keys EdDSA; a JWK
  that names its own `alg` verifies only that one, and `oct` (shared-secret) keys
  are never used;
- the key is found by `kid` (or is the only suitable key when the token names
  none); an unknown `kid` makes a URL-backed key set refetch once, at most every
  few seconds, so key rotation works and random `kid`s cannot make us hammer the
  issuer; when the issuer is down, requests share one fetch and then fail fast
  (`JwksSource`);
- `exp` is required, `nbf` and `iat` are honoured, all with a small leeway;
  `iss` must equal the configured issuer and `aud` contain a configured audience.

Failures are `InvalidToken` (the client's problem: 401) or `KeysUnavailable` (the
key set cannot be had: 503). Token contents are never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt

log = logging.getLogger("cicatrix.auth")

MAX_TOKEN_BYTES = 16 * 1024
MIN_REFETCH_SECONDS = 10.0
MAX_RETRY_SECONDS = 60.0
MAX_JWKS_BYTES = 256 * 1024
"""A JWK Set is a few kilobytes; reading no more keeps a hostile or broken key URL from filling memory."""
_FAMILY = {"RSA": ("RS", "PS"), "EC": ("ES",), "OKP": ("EdDSA",)}
_CURVE = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


class InvalidToken(Exception):
    """The token is not acceptable; the message is safe to show the client (it names no token content)."""


class KeysUnavailable(Exception):
    """The issuer's key set could not be fetched and none is cached; `retry_after` says when it will be tried
    again (seconds)."""

    def __init__(self, message: str, *, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _suits(jwk: Mapping[str, Any], alg: str) -> bool:
    """Whether a JWK may verify a signature made with `alg`."""
    if jwk.get("use") not in (None, "sig"):
        return False
    ops = jwk.get("key_ops")
    if ops is not None and "verify" not in ops:
        return False
    if jwk.get("alg") not in (None, alg):
        return False
    prefixes = _FAMILY.get(str(jwk.get("kty")), ())
    if not any(alg.startswith(prefix) for prefix in prefixes):
        return False
    return alg not in _CURVE or jwk.get("crv") == _CURVE[alg]


def _keys_of(document: Any) -> list[dict[str, Any]]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeysUnavailable("the key set is not a JWK Set ({\"keys\": [...]})")
    return [key for key in document["keys"] if isinstance(key, dict)]


class JwksSource:
    """Where the keys come from: a file read once, or a URL fetched with httpx and cached.

    During an outage of the issuer no request waits behind another: requests that need the keys while they
    are being fetched share that one fetch (at most `timeout` seconds), and after a failed fetch every request
    is answered at once, with the keys still cached or with `KeysUnavailable` (503 and Retry-After), until
    the pause after the failure is over. The pause starts at `retry_seconds` and doubles with each failure
    in a row, up to MAX_RETRY_SECONDS."""

    def __init__(self, *, url: str | None = None, file: Path | None = None, cache_seconds: float = 300.0,
                 timeout: float = 5.0, retry_seconds: float = 2.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url
        self.file = file
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self._transport = transport
        self._keys: list[dict[str, Any]] | None = None
        self._fetched = 0.0
        self._failures = 0
        self._retry_at = 0.0
        self._fetching: asyncio.Future[list[dict[str, Any]]] | None = None

    async def keys(self, *, refresh: bool = False) -> list[dict[str, Any]]:
        """The current keys; `refresh` asks for a refetch (honoured at most every MIN_REFETCH_SECONDS)."""
        if self.file is not None:
            if self._keys is None:
                self._keys = _keys_of(json.loads(self.file.read_text()))
            return self._keys
        now = time.monotonic()
        stale = self._keys is None or now - self._fetched > self.cache_seconds
        if not stale and not (refresh and now - self._fetched > MIN_REFETCH_SECONDS):
            return self._keys or []
        if now < self._retry_at:  # the last fetch failed moments ago: answer now, do not queue
            if self._keys is not None:
                return self._keys
            raise KeysUnavailable("the token issuer's key set cannot be fetched", retry_after=self._retry_at - now)
        fetching = self._fetching
        if fetching is None or fetching.done() or fetching.get_loop() is not asyncio.get_running_loop():
            fetching = self._fetching = asyncio.ensure_future(self._fetch())
        return await asyncio.shield(fetching)

    async def _fetch(self) -> list[dict[str, Any]]:
        assert self.url is not None
        try:
            async with httpx.AsyncClient(timeout=self.timeout, transport=self._transport) as http, \
                    http.stream("GET", self.url, headers={"Accept": "application/json"}) as response:
                response.raise_for_status()
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise KeysUnavailable("the key set is larger than a key set can reasonably be")
            self._keys = _keys_of(json.loads(body))
            self._fetched = time.monotonic()
            self._failures = 0
        except (httpx.HTTPError, ValueError, KeysUnavailable) as exc:
            pause = min(self.retry_seconds * 2 ** self._failures, MAX_RETRY_SECONDS)
            self._failures += 1
            self._retry_at = time.monotonic() + pause
            log.warning("JWKS fetch failed", extra={"error": type(exc).__name__, "retry_seconds": pause})
            if self._keys is None:
                raise KeysUnavailable("the token issuer's key set cannot be fetched", retry_after=pause) from None
        return self._keys


@dataclass(frozen=True)
class TokenPolicy:
    issuer: str
    audiences: tuple[str, ...]
    algorithms: frozenset[str]
    leeway_seconds: int = 30


class TokenVerifier:
    def __init__(self, policy: TokenPolicy, keys: JwksSource) -> None:
        self.policy = policy
        self.source = keys

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, once signature, algorithm, key, time, issuer and audience all check out."""
        header, alg = signed_header(token, self.policy.algorithms)
        kid = header.get("kid")
        jwk = self._select(await self.source.keys(), kid, alg)
        if jwk is None and kid is not None:
            jwk = self._select(await self.source.keys(refresh=True), kid, alg)
        if jwk is None:
            raise InvalidToken("the access token was not signed by a key of the configured issuer")
        return decode(token, jwk, alg, audience=list(self.policy.audiences), issuer=self.policy.issuer,
                      leeway=self.policy.leeway_seconds, require=["exp", "iss", "aud"])

    @staticmethod
    def _select(keys: list[dict[str, Any]], kid: Any, alg: str) -> dict[str, Any] | None:
        suitable = [key for key in keys if _suits(key, alg)]
        if kid is not None:
            return next((key for key in suitable if key.get("kid") == kid), None)
        return suitable[0] if len(suitable) == 1 else None


def signed_header(token: str, algorithms: Collection[str]) -> tuple[dict[str, Any], str]:
    """The token's JOSE header and its algorithm, when it is a signed JWT of a size and algorithm we accept."""
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidToken("the token is too long")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise InvalidToken("the token is not a signed JWT") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        raise InvalidToken(f"tokens signed with {alg!s:.20} are not accepted")
    return header, alg


def decode(token: str, jwk: dict[str, Any], alg: str, *, audience: list[str], issuer: str | list[str],
           leeway: int, require: list[str]) -> dict[str, Any]:
    """The claims of a token verified with `jwk`; PyJWT's refusals become InvalidToken with a reason to show."""
    try:
        return jwt.decode(token, key=jwt.PyJWK(jwk, algorithm=alg), algorithms=[alg], audience=audience,
                          issuer=issuer, leeway=leeway, options={"require": require})
    except jwt.ExpiredSignatureError:
        raise InvalidToken("the token has expired") from None
    except jwt.ImmatureSignatureError:
        raise InvalidToken("the token is not valid yet") from None
    except jwt.InvalidAudienceError:
        raise InvalidToken("the token is not meant for this service (aud)") from None
    except jwt.InvalidIssuerError:
        raise InvalidToken("the token comes from another issuer (iss)") from None
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidToken(f"the token has no {exc.claim} claim") from None
    except jwt.PyJWTError:
        raise InvalidToken("the token's signature or claims are invalid") from None
