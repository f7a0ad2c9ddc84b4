"""Catalog configuration (environment variables prefixed `CATALOG_`)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from services.fhir.settings import ServiceSettings

CONTENT_DIR = Path(__file__).parent / "content"


class CatalogSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CATALOG_", extra="ignore")

    PORT: int = 8081
    DATABASE_URL: str = "sqlite:///./var/catalog.db"
    CONTENT_DIR: Path = CONTENT_DIR
    LOAD_CONTENT: bool = True
    """Load `CONTENT_DIR` at start-up (idempotent: unchanged files create no new versions)."""
    ALLOW_ANONYMOUS_READ: bool = False
    """With AUTH_MODE=jwt, let requests without a token read and search (the knowledge is not patient data)."""
    READ_CACHE_SECONDS: float = 5.0
    """Reads by id and searches are answered from memory for this long; a write through this process is seen
    at once, one through another process sharing the database within this time (0 turns the cache off)."""
