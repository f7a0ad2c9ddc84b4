"""Settings shared by both services; each service subclasses with its own env prefix.

Names follow DESIGN.md (`CATALOG_DATABASE_URL`, `CAREPLAN_DATABASE_URL`, ...). The
embedded defaults run the whole stack on one machine with SQLite files under ./var/.
"""

from __future__ import annotations

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    @field_validator("DATABASE_URL")
    @classmethod
    def _normalise_database_url(cls, value: str) -> str:
        """Accept the libpq-style URLs operators paste and pin the psycopg 3 driver."""
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix):]
        return value

    @field_validator("MAX_BODY_BYTES")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be positive")
        return value
