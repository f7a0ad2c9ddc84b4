"""Limits on what one request may ask a service to do, derived from what the content needs.

A scar assessment answers a dozen questions; a patient has tens of allergies, not
thousands; a search needs a few `_include`s. Each limit here is a setting with a
default well above what real content uses, so that a request can only be refused
for being out of all proportion. Every refusal is a 4xx OperationOutcome (code
`too-costly`) whose diagnostics name the setting, so that an operator who does
need more knows which one to raise.
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass
from typing import Any

from services.fhir.outcome import FhirError
from services.fhir.settings import ServiceSettings


class LimitExceeded(FhirError):
    """The request asks for more than a limit allows (422 for operations, 400 for search parameters)."""

    status, code = 422, "too-costly"


@dataclass(frozen=True)
class Limit:
    """One limit: its setting's name (with the service's prefix, as an operator sets it) and its value."""

    setting: str
    value: int

    def check_count(self, items: Sized, what: str, expression: str, *, status: int = 422) -> None:
        if len(items) > self.value:
            raise LimitExceeded(f"{what}: {len(items)}, more than the {self.value} allowed ({self.setting})",
                                expression=expression, status=status)

    def check_length(self, text: Any, what: str, expression: str, *, status: int = 422) -> None:
        if isinstance(text, str) and len(text) > self.value:
            raise LimitExceeded(f"{what} is {len(text)} characters long, more than the {self.value} allowed "
                                f"({self.setting})", expression=expression, status=status)


def limit(settings: ServiceSettings, name: str) -> Limit:
    """The limit held by setting `name` (e.g. MAX_INCLUDES) of a service's settings."""
    prefix = settings.model_config.get("env_prefix", "")
    return Limit(f"{prefix}{name}", int(getattr(settings, name)))


@dataclass(frozen=True)
class InputLimits:
    """The limits every operation applies to its Parameters (see the MAX_* settings)."""

    parameters: Limit
    code_length: Limit
    canonical_length: Limit

    @classmethod
    def of(cls, settings: ServiceSettings) -> InputLimits:
        return cls(parameters=limit(settings, "MAX_PARAMETERS"), code_length=limit(settings, "MAX_CODE_LENGTH"),
                   canonical_length=limit(settings, "MAX_CANONICAL_LENGTH"))

    def check_parameters(self, body: Any) -> None:
        """Count a Parameters body's entries before anything validates or reads them."""
        if isinstance(body, dict) and isinstance(body.get("parameter"), list):
            self.parameters.check_count(body["parameter"], "Parameters entries", "Parameters.parameter")

    def check_coding(self, coding: Any, expression: str) -> None:
        if isinstance(coding, dict):
            for key in ("system", "code", "display"):
                self.code_length.check_length(coding.get(key), f"The coding's {key}", f"{expression}.{key}")


DEFAULT_LIMITS = InputLimits.of(ServiceSettings.model_construct())
"""The documented defaults (not read from the environment), for callers without a service."""
