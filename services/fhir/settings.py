"""Settings shared by both services; each service subclasses with its own env prefix.

Names follow DESIGN.md (`CATALOG_DATABASE_URL`, `CAREPLAN_DATABASE_URL`, ...). The
embedded defaults run the whole stack on one machine with SQLite files under ./var/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                                   "ES256", "ES384", "ES512", "EdDSA"})
"""Signature algorithms a token may use: public-key ones only (never `none`, never HS* with a public key)."""


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    HOST: str = "127.0.0.1"
    PORT: int = 8080
    DATABASE_URL: str = "sqlite:///./var/service.db"
    BASE_URL: str | None = None
    """Public FHIR base URL used in Location headers and Bundle links; derived from the request if unset."""
    MAX_BODY_BYTES: int = 1024 * 1024
    LOG_LEVEL: str = "INFO"
    AUTO_MIGRATE: bool = True
    """Apply Alembic migrations at start-up (the embedded default); production runs `cicatrix migrate`."""
    WORKERS: int = 1
    """Server processes for `cicatrix serve` (uvicorn workers, one event loop each). More than one needs
    PostgreSQL: SQLite allows one writer at a time. Start-up work (migrations, catalog content) runs once,
    before the workers start; each worker keeps its own caches and its own /metrics."""
    HTTP: Literal["httptools", "h11"] = "httptools"
    """HTTP/1.1 parser of `cicatrix serve`: httptools (C, the default) or h11 (pure Python, for platforms
    without a httptools wheel or to rule the parser out when debugging)."""
    LOOP: Literal["uvloop", "asyncio"] = "uvloop"
    """Event loop of `cicatrix serve`: uvloop (libuv, the default) or the standard library's asyncio loop."""

    # --- inbound security (README.md#security) ------------------------------------------------------------
    AUTH_MODE: Literal["off", "jwt"] = "off"
    """`jwt`: every FHIR request needs a bearer token (SMART scopes); `off` only on loopback or ALLOW_INSECURE."""
    AUTH_JWKS_URL: str | None = None
    """JWK Set of the token issuer (fetched with httpx, cached, refetched when a token names an unknown `kid`)."""
    AUTH_JWKS_FILE: Path | None = None
    """The JWK Set as a local file instead of a URL."""
    AUTH_ISSUER: str | None = None
    """Required `iss` of access tokens."""
    AUTH_AUDIENCE: str | None = None
    """Accepted `aud` value(s) of access tokens, comma-separated (usually this service's FHIR base URL)."""
    AUTH_ALGORITHMS: str = "RS256,RS384,RS512,PS256,PS384,PS512,ES256,ES384,ES512"
    """Allowed token signature algorithms (public-key only: `none` and HS* are refused)."""
    AUTH_LEEWAY_SECONDS: int = 30
    """Clock skew tolerated on `exp`, `nbf` and `iat`."""
    AUTH_JWKS_CACHE_SECONDS: float = 300.0
    """How long a fetched JWK Set is used before it is fetched again."""
    ALLOW_INSECURE: bool = False
    """Start with AUTH_MODE=off although HOST is not a loopback address (a deliberate, logged choice)."""
    CORS_ORIGINS: str = ""
    """Browser origins allowed to call the API (comma-separated); CORS stays off when empty."""
    AUTH_JWKS_TIMEOUT_SECONDS: float = 5.0
    """How long one fetch of the JWK Set may take; every request waiting for keys shares that one fetch."""
    AUTH_JWKS_RETRY_SECONDS: float = 2.0
    """After a failed JWK Set fetch, requests fail fast (503, Retry-After) for this long before the next
    attempt; the pause doubles with each further failure, up to 60 seconds."""

    LOOP_CONNECTIONS: int = 4
    """PostgreSQL connections the event loop uses itself, without a worker thread: reads by id of what is
    not cached (patient data), the audit trail's batches, and `$generate`'s look-up of a plan already made
    and its write of a body site's first plan. `0` sends those through worker threads too, as on SQLite."""

    # --- CPU work off the event loop, and limits on what one request may ask (README.md#bad-input) -----------
    WORK_THREADS: int = 2
    """Worker threads for planning, validation and searches (the event loop only does I/O). Python runs one
    thread at a time, so more threads add no CPU, only waiting for the event loop: raise it for searches on a
    slow database, scale with WORKERS for CPU."""
    WORK_QUEUE: int = 32
    """Requests that may wait for a worker thread; more are answered 503 with Retry-After at once."""
    WORK_BUDGET_SECONDS: float = 10.0
    """Time budget of one piece of work, waiting included: past it, 503 with Retry-After (the service is
    busy), or 422 when the work itself ran for more than half the budget (the input is the cause)."""
    MAX_INCLUDES: int = 10
    """Distinct `_include` / `_include:iterate` values one search may ask for."""
    MAX_PARAMETERS: int = 200
    """Entries (`parameter`) of a Parameters resource an operation reads."""
    MAX_CODE_LENGTH: int = 1024
    """Length of the system, code and display of a coding an operation reads."""
    MAX_CANONICAL_LENGTH: int = 512
    """Length of a canonical URL an operation reads (a planDefinition, say): the longest value a search takes,
    as canonicals are looked up by search; real ones are under a hundred characters."""

    @field_validator("DATABASE_URL")
    @classmethod
    def _normalise_database_url(cls, value: str) -> str:
        """Accept the libpq-style URLs operators paste and pin the psycopg 3 driver."""
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix):]
        return value

    @field_validator("MAX_BODY_BYTES", "WORKERS", "WORK_THREADS", "WORK_QUEUE", "MAX_INCLUDES", "MAX_PARAMETERS",
                     "MAX_CODE_LENGTH", "MAX_CANONICAL_LENGTH")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @field_validator("LOOP_CONNECTIONS")
    @classmethod
    def _not_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be 0 or more")
        return value

    @field_validator("WORK_BUDGET_SECONDS", "AUTH_JWKS_TIMEOUT_SECONDS", "AUTH_JWKS_RETRY_SECONDS")
    @classmethod
    def _positive_duration(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be a positive number of seconds")
        return value

    @field_validator("AUTH_ALGORITHMS")
    @classmethod
    def _public_key_algorithms(cls, value: str) -> str:
        """Refuse `none` and HMAC: with a published key, HS* would let anyone holding it mint tokens."""
        names = [name.strip() for name in value.split(",") if name.strip()]
        refused = [name for name in names if name not in ASYMMETRIC_ALGORITHMS]
        if refused or not names:
            raise ValueError(f"only public-key algorithms are allowed ({', '.join(sorted(ASYMMETRIC_ALGORITHMS))}); "
                             f"refused: {', '.join(refused) or '(none given)'}")
        return ",".join(names)

    @field_validator("AUTH_LEEWAY_SECONDS")
    @classmethod
    def _small_leeway(cls, value: int) -> int:
        if not 0 <= value <= 300:
            raise ValueError("must be between 0 and 300 seconds")
        return value

    @model_validator(mode="after")
    def _workers_need_postgres(self) -> ServiceSettings:
        if self.WORKERS > 1 and self.DATABASE_URL.startswith("sqlite"):
            prefix = self.model_config.get("env_prefix", "")
            raise ValueError(f"{prefix}WORKERS={self.WORKERS} needs PostgreSQL: SQLite allows one writer at a time")
        return self

    @model_validator(mode="after")
    def _jwt_needs_keys_issuer_audience(self) -> ServiceSettings:
        """In jwt mode a token can only be checked against a key source, an issuer and an audience."""
        if self.AUTH_MODE == "jwt":
            prefix = self.model_config.get("env_prefix", "")
            missing = [prefix + name for name in ("AUTH_ISSUER", "AUTH_AUDIENCE") if not getattr(self, name)]
            if (self.AUTH_JWKS_URL is None) == (self.AUTH_JWKS_FILE is None):
                missing.append(f"exactly one of {prefix}AUTH_JWKS_URL and {prefix}AUTH_JWKS_FILE")
            if missing:
                raise ValueError(f"{prefix}AUTH_MODE=jwt needs {', '.join(missing)}")
        return self

    @property
    def cors_origins(self) -> list[str]:
        return [origin.strip() for origin in self.CORS_ORIGINS.split(",") if origin.strip()]
