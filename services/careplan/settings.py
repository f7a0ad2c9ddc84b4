"""Care-plan configuration (environment variables prefixed `CAREPLAN_`)."""

from __future__ import annotations

from typing import Literal

from pydantic_settings import SettingsConfigDict

from services.fhir.settings import ServiceSettings


class CareplanSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CAREPLAN_", extra="ignore")

    PORT: int = 8082
    DATABASE_URL: str = "sqlite:///./var/careplan.db"
    CATALOG_URL: str = "http://127.0.0.1:8081/fhir"
    """FHIR base of the catalog the protocols, activities and preparations come from."""
    EHR_BASE_URL: str = "http://127.0.0.1:8090/fhir"
    """FHIR base of the EHR the plans are delivered to (the local sandbox by default)."""
    EHR_AUTH: Literal["none", "bearer", "smart-backend"] = "none"
    EHR_TOKEN: str | None = None
    """Static bearer token towards the EHR when EHR_AUTH=bearer."""
