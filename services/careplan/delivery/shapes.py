"""Which delivery shape the EHR supports, read from its CapabilityStatement.

    transaction  one `transaction` Bundle: CarePlan (ifNoneExist / ifMatch) + Provenance, atomic
    individual   ordered single requests: CarePlan (If-None-Exist / If-Match), then Provenance
    document     DocumentReference (plan as HTML + CarePlan JSON) + Provenance, for EHRs that take
                 no CarePlan writes (Oracle Health Millennium R4 is one)

`auto` (CAREPLAN_EHR_DELIVERY) picks the first of these the statement allows; any
other value is used as configured. The statement is read when first needed and
again every CAREPLAN_EHR_CAPABILITY_REFRESH_SECONDS, so an EHR upgrade changes the
shape without a restart; failing to read it fails the attempt like any transport
error (retried, and visible on the Task).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from services.careplan.delivery.ehr_client import EhrClient

log = logging.getLogger("cicatrix.careplan.delivery")

TRANSACTION, INDIVIDUAL, DOCUMENT = "transaction", "individual", "document"
SHAPES = (TRANSACTION, INDIVIDUAL, DOCUMENT)


class NoDeliveryShape(Exception):
    """The EHR advertises no way to receive a plan."""


@dataclass(frozen=True)
class EhrCapabilities:
    system: frozenset[str] = frozenset()
    interactions: dict[str, frozenset[str]] = field(default_factory=dict)
    conditional_create: dict[str, bool] = field(default_factory=dict)
    known: bool = True
    """False for the assumed capabilities of a configured shape whose statement could not be read."""

    def can(self, resource_type: str, interaction: str) -> bool:
        return interaction in self.interactions.get(resource_type, frozenset())

    def trusts_conditional_create(self, resource_type: str) -> bool:
        """Whether If-None-Exist is advertised; without it the dispatcher always searches before creating."""
        return self.conditional_create.get(resource_type, False)


def read_capabilities(statement: dict[str, Any]) -> EhrCapabilities:
    rest = next((r for r in statement.get("rest", []) if r.get("mode") == "server"), {})
    interactions: dict[str, frozenset[str]] = {}
    conditional: dict[str, bool] = {}
    for resource in rest.get("resource", []):
        kind = resource.get("type")
        if isinstance(kind, str):
            interactions[kind] = frozenset(i.get("code") for i in resource.get("interaction", []))
            conditional[kind] = bool(resource.get("conditionalCreate", False))
    return EhrCapabilities(system=frozenset(i.get("code") for i in rest.get("interaction", [])),
                           interactions=interactions, conditional_create=conditional)


def choose_shape(capabilities: EhrCapabilities) -> str:
    careplan_writes = capabilities.can("CarePlan", "create")
    if careplan_writes and "transaction" in capabilities.system:
        return TRANSACTION
    if careplan_writes:
        return INDIVIDUAL
    if capabilities.can("DocumentReference", "create"):
        return DOCUMENT
    raise NoDeliveryShape("the EHR's CapabilityStatement offers neither CarePlan create nor DocumentReference create")


class ShapeSelector:
    """The configured shape, or the one the EHR's current CapabilityStatement allows (cached, refreshed)."""

    def __init__(self, configured: str, *, refresh_seconds: float) -> None:
        self.configured = configured
        self.refresh_seconds = refresh_seconds
        self._capabilities: EhrCapabilities | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()

    async def current(self, client: EhrClient) -> tuple[str, EhrCapabilities]:
        async with self._lock:
            stale = time.monotonic() - self._read_at > self.refresh_seconds
            if self._capabilities is None or stale:
                try:
                    self._capabilities = read_capabilities(await client.capabilities())
                    self._read_at = time.monotonic()
                    chosen = choose_shape(self._capabilities) if self.configured == "auto" else self.configured
                    log.info("EHR capabilities read", extra={"shape": chosen, "configured": self.configured})
                except Exception:
                    if self.configured == "auto":
                        raise
                    # A configured shape does not need the statement; assume If-None-Exist is not to be trusted.
                    self._capabilities = self._capabilities or EhrCapabilities(known=False)
                    self._read_at = time.monotonic()
        capabilities = self._capabilities
        shape = choose_shape(capabilities) if self.configured == "auto" else self.configured
        return shape, capabilities

    def forget(self) -> None:
        """Read the statement again before the next delivery (after a 405 suggests it changed)."""
        self._capabilities = None
