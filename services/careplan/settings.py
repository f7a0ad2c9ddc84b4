"""Care-plan configuration (environment variables prefixed `CAREPLAN_`)."""

from __future__ import annotations

from collections.abc import Container
from datetime import date, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import holidays
from pydantic import ValidationInfo, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.careplan.scheduling import ClinicCalendar
from services.fhir.auth import is_loopback
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

    # --- delivery to the EHR (see "Delivery to the EHR" in README.md) ----------------------------------------
    DISPATCHER: Literal["embedded", "off"] = "embedded"
    """Run the delivery dispatcher inside this process (`off` when `cicatrix dispatch` workers do it)."""
    EHR_DELIVERY: Literal["auto", "transaction", "individual", "document"] = "auto"
    """Delivery shape; `auto` chooses from the EHR's CapabilityStatement, any other value restricts the
    request plan to that shape (still only with what the EHR declares)."""
    EHR_SEARCH_MAX_PAGES: int = 10
    """Pages followed by a search-before-resend that matches our identifier here (search by patient)."""
    DELIVERY_MAX_ATTEMPTS: int = 12
    """Attempts before a delivery is marked failed (the Task shows why; `$retry` starts again)."""
    DELIVERY_MAX_AGE: timedelta = timedelta(hours=24)
    """No retry is scheduled past this age (seconds or ISO 8601 duration, e.g. PT30M)."""
    DELIVERY_BACKOFF_SECONDS: float = 2.0
    """First retry delay; doubles per attempt, with jitter, up to DELIVERY_BACKOFF_MAX_SECONDS."""
    DELIVERY_BACKOFF_MAX_SECONDS: float = 600.0
    DELIVERY_LEASE_SECONDS: float = 120.0
    """How long a claimed delivery stays with its worker without renewal (a live worker renews it every third of
    it): a killed worker's deliveries are taken over this long after its last renewal."""
    DELIVERY_BATCH_SIZE: int = 8
    """Deliveries one dispatcher works on at once."""
    DELIVERY_POLL_SECONDS: float = 5.0
    """Polling interval when no wake-up arrives (LISTEN/NOTIFY on PostgreSQL wakes the dispatcher at once)."""
    DELIVERY_READ_BACK: bool = True
    """Read each delivered plan back once and record elements the EHR dropped."""
    DISPATCHER_SHUTDOWN_GRACE_SECONDS: float = 10.0
    """On SIGTERM, in-flight deliveries get this long to finish; the rest are released for another worker."""
    DISPATCHER_METRICS_PORT: int | None = None
    """`cicatrix dispatch` serves Prometheus metrics on this port when set."""
    EHR_CONNECT_TIMEOUT_SECONDS: float = 5.0
    EHR_TIMEOUT_SECONDS: float = 30.0
    """Per-request read/write timeout towards the EHR."""
    EHR_CAPABILITY_REFRESH_SECONDS: float = 3600.0
    """How often the EHR's CapabilityStatement is read again (the delivery shape may change)."""
    EHR_CA_BUNDLE: Path | None = None
    """PEM bundle of the CAs the EHR's TLS certificate is checked against (system CAs when unset; never off)."""
    EHR_SMART_CLIENT_ID: str | None = None
    """SMART Backend Services client_id (EHR_AUTH=smart-backend)."""
    EHR_SMART_KEY_FILE: Path | None = None
    """The client's private key: a PEM file, or a JWK Set JSON file holding the private JWK."""
    EHR_SMART_KEY_ID: str | None = None
    """`kid` of the key as registered with the EHR (taken from the JWK when the key file is a JWK Set)."""
    EHR_SMART_ALGORITHM: Literal["RS384", "ES384"] | None = None
    """Signing algorithm; derived from the key type when unset."""
    EHR_SMART_TOKEN_URL: str | None = None
    """Token endpoint; discovered from [EHR base]/.well-known/smart-configuration when unset."""
    EHR_SMART_SCOPE: str = "system/CarePlan.crus system/Provenance.crs system/DocumentReference.crus"

    # --- topic-based subscriptions (see "Subscriptions" in README.md) -----------------------------------
    SUBSCRIPTION_ENDPOINTS: str = ""
    """URL prefixes a subscription's endpoint must start with, comma-separated; empty: no subscription is accepted."""
    SUBSCRIPTION_LOOPBACK_HTTP: bool | None = None
    """Accept `http` endpoints on a loopback address (development); unset: only while HOST is loopback."""
    SUBSCRIPTION_MAX_SUBSCRIPTIONS: int = 5000
    """Subscriptions that may exist at once (not deleted): the bound of one event's fan-out."""
    SUBSCRIPTION_MAX_ATTEMPTS: int = 8
    """Attempts at one notification before the subscription moves to `error`."""
    SUBSCRIPTION_MAX_AGE: timedelta = timedelta(hours=1)
    """No retry of a notification is scheduled past this age (seconds or ISO 8601 duration)."""
    SUBSCRIPTION_BACKOFF_SECONDS: float = 1.0
    """First retry delay; doubles per attempt, with jitter, up to SUBSCRIPTION_BACKOFF_MAX_SECONDS."""
    SUBSCRIPTION_BACKOFF_MAX_SECONDS: float = 300.0
    SUBSCRIPTION_LEASE_SECONDS: float = 60.0
    """How long a claimed notification stays with its worker (must exceed SUBSCRIPTION_TIMEOUT_MAX_SECONDS)."""
    SUBSCRIPTION_BATCH_SIZE: int = 8
    """Notifications one worker sends at once."""
    SUBSCRIPTION_POLL_SECONDS: float = 5.0
    SUBSCRIPTION_TIMEOUT_SECONDS: float = 10.0
    """Per-request timeout towards an endpoint when the subscription asks for none."""
    SUBSCRIPTION_TIMEOUT_MAX_SECONDS: float = 30.0
    """Upper bound of a subscription's own timeout (backport-timeout)."""
    SUBSCRIPTION_HEARTBEAT_MIN_SECONDS: int = 10
    """Shortest heartbeat period a subscription may ask for (backport-heartbeat-period)."""
    SUBSCRIPTION_MAX_HEADERS: int = 4
    """channel.header lines per subscription (each at most 1024 characters)."""
    SUBSCRIPTION_EVENTS_MAX: int = 100
    """Events one `$events` answer carries at most (ask again from the next number for more)."""

    QUESTIONNAIRE_URL: str = "https://fhir.cicatrix.org/Questionnaire/scar-assessment"
    """Canonical of the scar assessment Questionnaire every assessment must answer."""
    CATALOG_CACHE_SECONDS: float = 30.0
    """How long catalog knowledge is used without revalidation (revalidation is a cheap 304)."""
    CATALOG_TIMEOUT_SECONDS: float = 5.0

    # --- limits on one assessment (README.md#bad-input) ------------------------------------------------------
    MAX_ANSWERS_PER_ITEM: int = 100
    """Answers one assessment item may have (repeating items: allergies, declined modalities)."""
    MAX_ALLERGIES: int = 100
    """Distinct allergies and intolerances of one request (allergy answers and AllergyIntolerance codings)."""
    PLAN_START_PAST_DAYS: int = 3653
    """How far before today a plan's `start` may lie: ten years, for courses begun before they are recorded
    and for reproducible requests with fixed dates (the shipped examples); year 1 or 1900 is a typo."""
    PLAN_START_FUTURE_DAYS: int = 731
    """How far after today a plan's `start` may lie: two years, as long as a scar may be left to mature."""
    CONDITION_CACHE_BYTES: int = 16 * 1024 * 1024
    """Memory for protocol condition results remembered by the answers they read (answer_conditions.py)."""
    CATALOG_CACHE_BYTES: int = 64 * 1024 * 1024
    """Memory for catalog responses (protocols, the Questionnaire, value sets) kept for outages."""

    # --- CDS Hooks (README.md#cds-hooks) ---------------------------------------------------------------------
    CDS_AUTH: Literal["jwt", "off"] = "off"
    """`jwt`: every CDS Hooks call needs the EHR's signed JWT; `off` only on loopback or with ALLOW_INSECURE."""
    CDS_ISSUER: str = ""
    """Trusted `iss` values of CDS Client JWTs, comma-separated."""
    CDS_JWKS_FILE: Path | None = None
    """The CDS Clients' JWK Set as a local file (for tokens without `jku`)."""
    CDS_JWKS_URL: str = ""
    """JWK Set URLs of the CDS Clients, comma-separated: used for tokens without `jku`, and the only URLs a
    token's `jku` may name (nothing else is ever fetched)."""
    CDS_BASE_URL: str | None = None
    """Public base URL of this service (`https://careplan.example.org`); the JWT `aud` must be
    `{CDS_BASE_URL}/cds-services/{id}`. Derived from the request when unset."""
    CDS_MAX_TOKEN_SECONDS: int = 300
    """Longest accepted JWT lifetime (exp - iat); a `jti` is remembered for the token's lifetime."""
    CDS_REPLAY_CACHE_SIZE: int = 100_000
    """`jti`s remembered at once; when full of unexpired tokens, new calls get 503 until some expire."""
    CDS_MAX_FEEDBACK_ITEMS: int = 100
    """Feedback items accepted in one feedback call."""
    CDS_CORS_ORIGINS: str = ""
    """Browser origins allowed to call /cds-services (comma-separated), for EHRs that call from the browser."""
    CDS_FHIR_TIMEOUT_SECONDS: float = 2.0
    """Per-request timeout when fetching missing prefetch data from the EHR's `fhirServer`."""
    CDS_FHIR_MAX_BYTES: int = 2 * 1024 * 1024
    """Largest answer read from the EHR's `fhirServer` for one prefetch query."""

    CLINIC_DAYS: str = "mon,tue,wed,thu,fri"
    """Weekdays the clinic treats patients, comma-separated (mon..sun)."""
    CLOSED_DATES: str = ""
    """Clinic-specific closures on top of public holidays, comma-separated ISO dates."""
    CLINIC_COUNTRY: str = "DE"
    """ISO 3166-1 alpha-2 country whose public holidays close the clinic (the `holidays` package); empty = none.
    DE by default, the country of the default time zone (Europe/Berlin)."""
    CLINIC_SUBDIVISION: str = ""
    """ISO 3166-2 subdivision code without the country (e.g. BE for Berlin) for regional holidays; empty = only
    the country's nationwide holidays."""
    MAX_PROCEDURES_PER_DAY: int = 2
    MAX_VISITS_PER_WEEK: int = 3
    """Patient-burden budget: clinic visits per ISO week; procedures that may share a day are grouped into one visit,
    and what does not fit waits for the next series by the protocol's scheduling rank."""
    CLINIC_TIMEZONE: str = "Europe/Berlin"
    FIRST_SESSION_TIME: str = "09:00"
    SESSION_MINUTES: int = 45
    """Slot length: a patient's second procedure of a day starts this much after the first."""

    @field_validator("DELIVERY_MAX_AGE", "SUBSCRIPTION_MAX_AGE", mode="before")
    @classmethod
    def _seconds_or_duration(cls, value: object) -> object:
        """Environment values are text: '86400' means seconds, as does a number; ISO 8601 durations pass on."""
        if isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
            return timedelta(seconds=float(value))
        return value

    @field_validator("DELIVERY_MAX_ATTEMPTS", "DELIVERY_BATCH_SIZE", "EHR_SEARCH_MAX_PAGES", "MAX_ANSWERS_PER_ITEM",
                     "MAX_ALLERGIES", "CONDITION_CACHE_BYTES", "CATALOG_CACHE_BYTES", "SUBSCRIPTION_MAX_SUBSCRIPTIONS",
                     "SUBSCRIPTION_MAX_ATTEMPTS", "SUBSCRIPTION_BATCH_SIZE", "SUBSCRIPTION_HEARTBEAT_MIN_SECONDS",
                     "SUBSCRIPTION_EVENTS_MAX")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @field_validator("DELIVERY_BACKOFF_SECONDS", "DELIVERY_BACKOFF_MAX_SECONDS", "DELIVERY_LEASE_SECONDS",
                     "DELIVERY_POLL_SECONDS", "EHR_CONNECT_TIMEOUT_SECONDS", "EHR_TIMEOUT_SECONDS",
                     "EHR_CAPABILITY_REFRESH_SECONDS", "CDS_FHIR_TIMEOUT_SECONDS", "SUBSCRIPTION_BACKOFF_SECONDS",
                     "SUBSCRIPTION_BACKOFF_MAX_SECONDS", "SUBSCRIPTION_LEASE_SECONDS", "SUBSCRIPTION_POLL_SECONDS",
                     "SUBSCRIPTION_TIMEOUT_SECONDS", "SUBSCRIPTION_TIMEOUT_MAX_SECONDS")
    @classmethod
    def _positive_seconds(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be a positive number of seconds")
        return value

    @field_validator("PLAN_START_PAST_DAYS", "PLAN_START_FUTURE_DAYS")
    @classmethod
    def _days(cls, value: int) -> int:
        if not 0 <= value <= 36525:
            raise ValueError("must be between 0 and 36525 days (a century)")
        return value


    @field_validator("CDS_MAX_TOKEN_SECONDS", "CDS_REPLAY_CACHE_SIZE", "CDS_FHIR_MAX_BYTES", "CDS_MAX_FEEDBACK_ITEMS")
    @classmethod
    def _positive_count(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @model_validator(mode="after")
    def _cds_jwt_needs_issuer_and_keys(self) -> CareplanSettings:
        if self.CDS_AUTH == "jwt":
            missing = [] if self.cds_issuers else ["CAREPLAN_CDS_ISSUER"]
            if self.CDS_JWKS_FILE is None and not self.cds_jwks_urls:
                missing.append("CAREPLAN_CDS_JWKS_FILE or CAREPLAN_CDS_JWKS_URL")
            if missing:
                raise ValueError(f"CAREPLAN_CDS_AUTH=jwt needs {' and '.join(missing)}")
        return self

    @property
    def cds_issuers(self) -> tuple[str, ...]:
        return tuple(i.strip() for i in self.CDS_ISSUER.split(",") if i.strip())

    @property
    def cds_jwks_urls(self) -> tuple[str, ...]:
        return tuple(u.strip() for u in self.CDS_JWKS_URL.split(",") if u.strip())

    @property
    def cds_cors_origins(self) -> list[str]:
        return [o.strip() for o in self.CDS_CORS_ORIGINS.split(",") if o.strip()]

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

    @field_validator("MAX_PROCEDURES_PER_DAY", "MAX_VISITS_PER_WEEK")
    @classmethod
    def _at_least_one_a_period(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @field_validator("CLINIC_SUBDIVISION")
    @classmethod
    def _holiday_calendar(cls, value: str, info: ValidationInfo) -> str:
        country = (info.data.get("CLINIC_COUNTRY") or "").strip().upper()
        supported = holidays.list_supported_countries()
        if country and country not in supported:
            raise ValueError(f"CLINIC_COUNTRY {country!r} is not an ISO 3166 country the holidays package knows")
        value = value.strip().upper()
        if value and (not country or value not in {s.upper() for s in supported[country]}):
            raise ValueError(f"{value!r} is not a subdivision of {country or 'an unset CLINIC_COUNTRY'} "
                             f"(known: {', '.join(supported.get(country, [])) or 'none'})")
        return value

    @field_validator("CLINIC_TIMEZONE")
    @classmethod
    def _zone(cls, value: str) -> str:
        ZoneInfo(value)
        return value

    @field_validator("SUBSCRIPTION_ENDPOINTS")
    @classmethod
    def _endpoint_prefixes(cls, value: str) -> str:
        for prefix in filter(None, (p.strip() for p in value.split(","))):
            if not prefix.startswith(("https://", "http://")) or "@" in prefix:
                raise ValueError(f"each prefix is an http(s) URL without credentials (got {prefix!r})")
        return value

    @model_validator(mode="after")
    def _lease_outlasts_a_request(self) -> CareplanSettings:
        """A notification's claim outlasts its request: else a second worker sends it while the first still is."""
        if self.SUBSCRIPTION_LEASE_SECONDS <= self.SUBSCRIPTION_TIMEOUT_MAX_SECONDS:
            raise ValueError("SUBSCRIPTION_LEASE_SECONDS must exceed SUBSCRIPTION_TIMEOUT_MAX_SECONDS")
        return self

    def subscription_endpoints(self) -> list[str]:
        return [p.strip() for p in self.SUBSCRIPTION_ENDPOINTS.split(",") if p.strip()]

    def loopback_http(self) -> bool:
        """May endpoints be plain http on a loopback address? Only in development (see SUBSCRIPTION_LOOPBACK_HTTP)."""
        if self.SUBSCRIPTION_LOOPBACK_HTTP is not None:
            return self.SUBSCRIPTION_LOOPBACK_HTTP
        return is_loopback(self.HOST)

    def calendar(self) -> ClinicCalendar:
        """The clinic calendar the scheduler plans on."""
        hour, minute = (int(p) for p in self.FIRST_SESSION_TIME.split(":"))
        return ClinicCalendar(
            working_days=frozenset(WEEKDAYS.index(d) for d in self.CLINIC_DAYS.split(",")),
            closed=frozenset(date.fromisoformat(p.strip()) for p in self.CLOSED_DATES.split(",") if p.strip()),
            max_per_day=self.MAX_PROCEDURES_PER_DAY, timezone=self.CLINIC_TIMEZONE,
            first_session=time(hour, minute), slot_minutes=self.SESSION_MINUTES,
            max_visits_per_week=self.MAX_VISITS_PER_WEEK,
            holidays=public_holidays(self.CLINIC_COUNTRY.strip().upper(), self.CLINIC_SUBDIVISION),
        )


def careplan_settings(settings: ServiceSettings) -> CareplanSettings:
    """The care-plan service's own settings, which its ServiceContext holds as the shared base class."""
    assert isinstance(settings, CareplanSettings), "the care-plan service runs on CareplanSettings"
    return settings


@lru_cache(maxsize=8)
def public_holidays(country: str, subdivision: str) -> Container[date]:
    """The country's (and subdivision's) public holidays; years are computed on first use and kept.

    Shared by every plan of the process, so the current and the coming years are computed here, once."""
    if not country:
        return frozenset()
    this_year = date.today().year
    return holidays.country_holidays(country, subdiv=subdivision or None, years=range(this_year - 1, this_year + 7))
