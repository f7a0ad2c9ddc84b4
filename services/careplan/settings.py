"""Care-plan configuration (environment variables prefixed `CAREPLAN_`)."""

from __future__ import annotations

from datetime import date, time
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import field_validator
from pydantic_settings import SettingsConfigDict

from services.careplan.scheduling import ClinicCalendar
from services.fhir.settings import ServiceSettings

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


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

    QUESTIONNAIRE_URL: str = "https://fhir.cicatrix.org/Questionnaire/scar-assessment"
    """Canonical of the scar assessment Questionnaire every assessment must answer."""
    CATALOG_CACHE_SECONDS: float = 30.0
    """How long catalog knowledge is used without revalidation (revalidation is a cheap 304)."""
    CATALOG_TIMEOUT_SECONDS: float = 5.0

    CLINIC_DAYS: str = "mon,tue,wed,thu,fri"
    """Weekdays the clinic treats patients, comma-separated (mon..sun)."""
    CLOSED_DATES: str = ""
    """Dates the clinic is closed (holidays), comma-separated ISO dates."""
    MAX_PROCEDURES_PER_DAY: int = 2
    CLINIC_TIMEZONE: str = "Europe/Berlin"
    FIRST_SESSION_TIME: str = "09:00"
    SESSION_MINUTES: int = 45
    """Slot length: a patient's second procedure of a day starts this much after the first."""

    @field_validator("CLINIC_DAYS")
    @classmethod
    def _weekdays(cls, value: str) -> str:
        days = [d.strip().lower()[:3] for d in value.split(",") if d.strip()]
        unknown = [d for d in days if d not in WEEKDAYS]
        if unknown or not days:
            raise ValueError(f"use weekday names mon..sun, comma-separated (got {value!r})")
        return ",".join(days)

    @field_validator("CLOSED_DATES")
    @classmethod
    def _dates(cls, value: str) -> str:
        for part in filter(None, (p.strip() for p in value.split(","))):
            date.fromisoformat(part)
        return value

    @field_validator("CLINIC_TIMEZONE")
    @classmethod
    def _zone(cls, value: str) -> str:
        ZoneInfo(value)
        return value

    def calendar(self) -> ClinicCalendar:
        """The clinic calendar the scheduler plans on."""
        hour, minute = (int(p) for p in self.FIRST_SESSION_TIME.split(":"))
        return ClinicCalendar(
            working_days=frozenset(WEEKDAYS.index(d) for d in self.CLINIC_DAYS.split(",")),
            closed=frozenset(date.fromisoformat(p.strip()) for p in self.CLOSED_DATES.split(",") if p.strip()),
            max_per_day=self.MAX_PROCEDURES_PER_DAY, timezone=self.CLINIC_TIMEZONE,
            first_session=time(hour, minute), slot_minutes=self.SESSION_MINUTES,
        )
