"""Inbound authentication: bearer tokens in, an `Access` decision out, before any route runs.

`AccessMiddleware` sits inside the edge (so its 401/403 become OperationOutcomes
with the request id) and in front of the routes. For every request under `/fhir`
except the open ones it:

1. reads what the request is (`services.fhir.routes`) and, for a batch or
   transaction, what each entry asks for;
2. with AUTH_MODE=off, lets it through as an anonymous caller;
3. otherwise verifies the bearer token (`services.fhir.tokens`) — no token or a bad
   one is 401 with `WWW-Authenticate: Bearer ...` (RFC 6750), unless the service
   allows anonymous reads and this is one;
4. lets `AccessPolicy.decide` allow it (possibly limited to one patient) or refuse
   it with 403, and leaves the decision in the ASGI scope for the route hooks and
   the audit trail.

`check_exposure` is the start-up rule that keeps an unauthenticated service off
the network.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.fhir.access import ACCESS_SCOPE_KEY, Access, AccessPolicy, Need, Principal
from services.fhir.jsonio import loads
from services.fhir.outcome import BadRequest, FhirError, Forbidden, ServiceUnavailable, Unauthorized
from services.fhir.routes import FHIR_PREFIX, FhirRequest, InvalidId, fhir_request
from services.fhir.settings import ServiceSettings
from services.fhir.tokens import InvalidToken, JwksSource, KeysUnavailable, TokenPolicy, TokenVerifier

log = logging.getLogger("cicatrix.auth")

PRINCIPAL_SCOPE_KEY = "cicatrix.principal"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", f"{FHIR_PREFIX}/metadata", "/openapi.json", "/docs",
                        "/docs/oauth2-redirect"})
"""Reachable without a token: probes, metrics, the CapabilityStatement and the API description (no data)."""
_ANONYMOUS = Access(Principal.anonymous(), enforced=False)
_BEARER = re.compile(r"^Bearer +([A-Za-z0-9\-._~+/]+=*) *$", re.IGNORECASE)


class InsecureExposure(RuntimeError):
    """The service would listen beyond loopback without authentication."""


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(settings: ServiceSettings, service: str) -> None:
    """Refuse to start unauthenticated on a non-loopback address unless ALLOW_INSECURE says so."""
    if settings.AUTH_MODE != "off" or is_loopback(settings.HOST):
        return
    prefix = settings.model_config.get("env_prefix", "")
    if settings.ALLOW_INSECURE:
        log.warning("authentication is off on a non-loopback address (ALLOW_INSECURE=true)",
                    extra={"service": service, "host": settings.HOST})
        return
    raise InsecureExposure(
        f"{service} refuses to start: {prefix}HOST={settings.HOST} is reachable from other machines and "
        f"{prefix}AUTH_MODE=off would let anyone on that network use the API. Set {prefix}AUTH_MODE=jwt "
        f"(README.md#security), bind {prefix}HOST=127.0.0.1, or set {prefix}ALLOW_INSECURE=true to accept the risk.")


def make_verifier(settings: ServiceSettings) -> TokenVerifier | None:
    """The token verifier AUTH_MODE=jwt asks for (settings have already checked it is complete)."""
    if settings.AUTH_MODE != "jwt":
        return None
    assert settings.AUTH_ISSUER and settings.AUTH_AUDIENCE
    audiences = tuple(a.strip() for a in settings.AUTH_AUDIENCE.split(",") if a.strip())
    policy = TokenPolicy(issuer=settings.AUTH_ISSUER, audiences=audiences,
                         algorithms=frozenset(settings.AUTH_ALGORITHMS.split(",")),
                         leeway_seconds=settings.AUTH_LEEWAY_SECONDS)
    keys = JwksSource(url=settings.AUTH_JWKS_URL, file=settings.AUTH_JWKS_FILE,
                      cache_seconds=settings.AUTH_JWKS_CACHE_SECONDS, timeout=settings.AUTH_JWKS_TIMEOUT_SECONDS,
                      retry_seconds=settings.AUTH_JWKS_RETRY_SECONDS)
    return TokenVerifier(policy, keys)


class AccessMiddleware:
    def __init__(self, app: ASGIApp, *, policy: AccessPolicy, verifier: TokenVerifier | None, realm: str,
                 own_auth_prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.policy = policy
        self.verifier = verifier
        self.realm = realm
        self.own_auth_prefixes = own_auth_prefixes
        """Paths whose routes authenticate callers themselves (CDS Hooks: the EHR's own signed JWTs)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["path"].startswith(self.own_auth_prefixes):
            await self.app(scope, receive, send)
            return
        if self.verifier is None:
            scope[ACCESS_SCOPE_KEY] = _ANONYMOUS  # immutable: one for every request
            await self.app(scope, receive, send)
            return
        request = _fhir_request(scope)
        token = self._bearer(scope)
        if token is None:
            if request is None or request.interaction == "batch" or not self._anonymous_ok(request):
                raise Unauthorized("This request needs an access token (Authorization: Bearer ...)",
                                   headers={"WWW-Authenticate": f'Bearer realm="{self.realm}"'})
            scope[ACCESS_SCOPE_KEY] = Access(Principal.anonymous())
            await self.app(scope, receive, send)
            return
        principal = await self._authenticate(token)
        scope[PRINCIPAL_SCOPE_KEY] = principal
        if request is None:
            if scope["path"] == FHIR_PREFIX or scope["path"].startswith(FHIR_PREFIX + "/"):
                raise Forbidden(f"No access rule covers {scope['method']} {scope['path'][:100]}")
            await self.app(scope, receive, send)  # outside the FHIR API: nothing but 404s
            return
        body: Any = None
        if request.interaction == "batch":
            raw, receive = await _buffered(receive)
            body = _parsed_or_none(raw)
        scope[ACCESS_SCOPE_KEY] = self.policy.decide(principal, self.policy.needs(request, body))
        await self.app(scope, receive, send)

    def _anonymous_ok(self, request: FhirRequest) -> bool:
        try:
            needs: list[Need] = self.policy.needs(request)
        except FhirError:
            return False
        return self.policy.anonymous_allowed(needs)

    def _bearer(self, scope: Scope) -> str | None:
        values = [v for k, v in scope.get("headers", []) if k == b"authorization"]
        if not values:
            return None
        match = _BEARER.match(values[0].decode("latin-1")) if len(values) == 1 else None
        if match is None:
            raise Unauthorized("The Authorization header must be a single 'Bearer <token>'",
                               headers={"WWW-Authenticate": self._challenge("invalid_request", "malformed header")})
        return match.group(1)

    async def _authenticate(self, token: str) -> Principal:
        assert self.verifier is not None
        try:
            claims = await self.verifier.verify(token)
        except InvalidToken as exc:
            raise Unauthorized(f"The access token was refused: {exc}",
                               headers={"WWW-Authenticate": self._challenge("invalid_token", str(exc))}) from None
        except KeysUnavailable as exc:
            raise ServiceUnavailable(f"Access tokens cannot be checked right now: {exc}",
                                     headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))}) from None
        principal = Principal.from_claims(claims)
        if principal.subject is None and principal.client_id is None:
            reason = "the access token names no subject (sub) or client (client_id)"
            raise Unauthorized(f"The access token was refused: {reason}",
                               headers={"WWW-Authenticate": self._challenge("invalid_token", reason)})
        return principal

    def _challenge(self, error: str, description: str) -> str:
        safe = re.sub(r'[^ -~]|["\\]', "", description)[:200]
        return f'Bearer realm="{self.realm}", error="{error}", error_description="{safe}"'


def _fhir_request(scope: Scope) -> FhirRequest | None:
    """The edge's parse of the request (an invalid id is a 400 there already)."""
    try:
        return fhir_request(scope)
    except InvalidId as exc:
        raise BadRequest(f"'{exc.segment[:70]}' is not a valid FHIR id", expression="id") from None


def _parsed_or_none(raw: bytes) -> Any:
    """The body as JSON, or None when it is not (the handler then answers 400 without touching data)."""
    try:
        return loads(raw)
    except FhirError:
        return None


async def _buffered(receive: Receive) -> tuple[bytes, Receive]:
    """Read the whole body (already size-limited by the edge) and hand the route a receive that replays it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay
