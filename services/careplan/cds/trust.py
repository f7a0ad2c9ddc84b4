"""Trusting CDS Clients: the JWT an EHR sends with every CDS Hooks call (CDS Hooks 2.0, "Trusting CDS Clients").

A call is accepted only when its `Authorization: Bearer` JWT

- is signed with a public-key algorithm (never `none`, never HS*) by a key from
  the configured JWK Set (file or URL) or from the JWK Set its `jku` names — and
  a `jku` must be one of the configured JWKS URLs, compared as exact strings, so
  a token can never make this service fetch an address of the caller's choosing;
- names a trusted issuer (`iss`, allow-list) and this very endpoint as `aud`;
- carries `exp`, `iat` and `jti`, lives no longer than CDS_MAX_TOKEN_SECONDS, and
  has not been seen before: each `jti` is remembered (per issuer) until its token
  expires, in a cache bounded by CDS_REPLAY_CACHE_SIZE.

The replay cache lives in this process; several workers each keep their own, so a
token replayed to another worker within its lifetime is not caught there.

Key handling (kid selection, key/algorithm fit, refetch limits) is the API's own
`services.fhir.tokens`; this module only adds what CDS Hooks asks beyond it.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Any

from services.careplan.settings import CareplanSettings
from services.fhir.outcome import ServiceUnavailable, Unauthorized
from services.fhir.settings import ASYMMETRIC_ALGORITHMS
from services.fhir.tokens import InvalidToken, JwksSource, KeysUnavailable, TokenVerifier, decode, signed_header

REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "jti"]


@dataclass
class ReplayCache:
    """`jti`s seen, each kept until its token expires; never more than `capacity` at once."""

    capacity: int
    _expiry: dict[tuple[str, str], float] = field(default_factory=dict)
    _heap: list[tuple[float, tuple[str, str]]] = field(default_factory=list)

    def remember(self, issuer: str, jti: str, expires: float, now: float) -> bool:
        """False when this (issuer, jti) was already used; raises ServiceUnavailable when full."""
        while self._heap and self._heap[0][0] <= now:
            _, key = heapq.heappop(self._heap)
            if self._expiry.get(key, now + 1) <= now:
                del self._expiry[key]
        key = (issuer, jti)
        if key in self._expiry:
            return False
        if len(self._expiry) >= self.capacity:
            raise ServiceUnavailable("Too many CDS Hooks calls are in flight to check them for replay; "
                                     "try again shortly", headers={"Retry-After": "5"})
        self._expiry[key] = expires
        heapq.heappush(self._heap, (expires, key))
        return True


class CdsClientVerifier:
    """Checks the JWT of one CDS Hooks call against the trusted issuers, keys and the called endpoint."""

    def __init__(self, settings: CareplanSettings, *, leeway_seconds: int = 30) -> None:
        self.issuers = settings.cds_issuers
        self.algorithms = ASYMMETRIC_ALGORITHMS
        self.max_lifetime = settings.CDS_MAX_TOKEN_SECONDS
        self.leeway = leeway_seconds
        self.replays = ReplayCache(settings.CDS_REPLAY_CACHE_SIZE)
        self.by_url = {url: JwksSource(url=url) for url in settings.cds_jwks_urls}
        self.configured: list[JwksSource] = list(self.by_url.values())
        if settings.CDS_JWKS_FILE is not None:
            self.configured.append(JwksSource(file=settings.CDS_JWKS_FILE))

    async def verify(self, authorization: str | None, audience: list[str]) -> dict[str, Any]:
        """The token's claims; 401 (with the reason) for anything the specification or our policy refuses."""
        try:
            return await self._verify(_bearer(authorization), audience)
        except InvalidToken as exc:
            raise Unauthorized(f"The CDS Client's JWT was refused: {exc}",
                               headers={"WWW-Authenticate": 'Bearer realm="cds-services"'}) from None
        except KeysUnavailable as exc:
            raise ServiceUnavailable(f"CDS Client JWTs cannot be checked right now: {exc}") from None

    async def _verify(self, token: str, audience: list[str]) -> dict[str, Any]:
        header, alg = signed_header(token, self.algorithms)
        jwk = await self._key(header.get("jku"), header.get("kid"), alg)
        claims = decode(token, jwk, alg, audience=audience, issuer=list(self.issuers), leeway=self.leeway,
                        require=REQUIRED_CLAIMS)
        return self._fresh(claims)

    async def _key(self, jku: Any, kid: Any, alg: str) -> dict[str, Any]:
        if jku is not None:
            source = self.by_url.get(jku) if isinstance(jku, str) else None
            if source is None:
                raise InvalidToken("its jku is not a JWK Set URL this service trusts")
            sources = [source]
        else:
            sources = self.configured
        for source in sources:
            jwk = TokenVerifier._select(await source.keys(), kid, alg)
            if jwk is None and kid is not None and source.url is not None:
                jwk = TokenVerifier._select(await source.keys(refresh=True), kid, alg)
            if jwk is not None:
                return jwk
        raise InvalidToken("it was not signed by a key of a trusted CDS Client")

    def _fresh(self, claims: dict[str, Any]) -> dict[str, Any]:
        jti, issued, expires = claims.get("jti"), claims.get("iat"), claims.get("exp")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise InvalidToken("its jti is not a usable nonce")
        if not isinstance(issued, int | float) or not isinstance(expires, int | float) \
                or expires - issued > self.max_lifetime:
            raise InvalidToken(f"it lives longer than {self.max_lifetime} seconds (exp - iat)")
        now = time.time()
        if not self.replays.remember(str(claims["iss"]), jti, float(expires) + self.leeway, now):
            raise InvalidToken("its jti was already used (replay)")
        return claims


def _bearer(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("the call carries no 'Authorization: Bearer <JWT>' header")
    return token.strip()
