"""CapabilityStatement builder.

Each service describes its types as data (`ResourceCapability` rows), its interaction
table (services.fhir.interaction_table) adds the interactions and operations it routes,
and the builder turns that into the R4 CapabilityStatement served at `/fhir/metadata`,
so the statement can only list what the routes really do. The statement is built
and checked against the R4B model once, at start-up, and served as stored bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from services.fhir import FHIR_VERSION
from services.fhir.jsonio import dumps
from services.fhir.searchparams import SearchParamDef


@dataclass(frozen=True)
class SearchParam:
    name: str
    type: str  # number | date | string | token | reference | composite | quantity | uri | special
    documentation: str = ""
    definition: str | None = None


@dataclass(frozen=True)
class Operation:
    name: str
    definition: str
    documentation: str = ""


@dataclass(frozen=True)
class ResourceCapability:
    type: str
    interactions: tuple[str, ...] = ()
    """Filled in from the interaction table, as `operations` are."""
    search_params: tuple[SearchParam, ...] = ()
    operations: tuple[Operation, ...] = ()
    versioning: str = "versioned-update"
    read_history: bool = True
    conditional_create: bool = False
    conditional_read: str = "full-support"
    search_include: tuple[str, ...] = ()
    documentation: str = ""
    profile: str | None = None
    """The profile the type follows (the base resource's StructureDefinition when unset)."""
    extensions: tuple[dict[str, Any], ...] = ()
    """`rest.resource.extension` (e.g. the SubscriptionTopics a server supports)."""


COMMON_SEARCH_PARAMS = (
    SearchParam("_id", "token", "Logical id of the resource"),
    SearchParam("_lastUpdated", "date", "When the resource version was stored (eq, ne, gt, ge, lt, le)"),
)


def search_params_of(definitions: Iterable[SearchParamDef]) -> tuple[SearchParam, ...]:
    """The CapabilityStatement rows for a type: the common parameters plus the type's own definitions."""
    return COMMON_SEARCH_PARAMS + tuple(SearchParam(d.name, d.type, d.documentation) for d in definitions)


@dataclass
class CapabilityBuilder:
    """Collects what a service implements and renders the CapabilityStatement."""

    name: str
    title: str
    description: str
    software_version: str
    resources: list[ResourceCapability] = field(default_factory=list)
    system_interactions: tuple[str, ...] = ()
    system_operations: tuple[Operation, ...] = ()
    security: dict[str, Any] | None = None
    """`rest.security` (set when the service requires tokens)."""

    def add(self, capability: ResourceCapability) -> None:
        self.resources.append(capability)

    def build(self, base_url: str | None = None) -> dict[str, Any]:
        now = datetime.now(UTC).replace(microsecond=0)
        rest: dict[str, Any] = {
            "mode": "server",
            "documentation": self.description,
            "resource": [self._resource(r) for r in sorted(self.resources, key=lambda r: r.type)],
        }
        if self.system_interactions:
            rest["interaction"] = [{"code": code} for code in self.system_interactions]
        if self.system_operations:
            rest["operation"] = [_operation(op) for op in self.system_operations]
        if self.security:
            rest["security"] = self.security
        statement: dict[str, Any] = {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "name": self.name,
            "title": self.title,
            "date": now.isoformat(),
            "publisher": "Cicatrix",
            "kind": "instance",
            "software": {"name": f"Cicatrix {self.title}", "version": self.software_version},
            "implementation": {"description": self.description, **({"url": base_url} if base_url else {})},
            "fhirVersion": FHIR_VERSION,
            "format": ["application/fhir+json", "json"],
            "rest": [rest],
        }
        # Checked once at start-up: a statement the R4B model rejects is a programming error.
        CapabilityStatement.model_validate(statement)
        return statement

    def build_bytes(self, base_url: str | None = None) -> bytes:
        return dumps(self.build(base_url))

    @staticmethod
    def _resource(capability: ResourceCapability) -> dict[str, Any]:
        entry: dict[str, Any] = {"extension": list(capability.extensions)} if capability.extensions else {}
        entry |= {
            "type": capability.type,
            "profile": capability.profile or f"http://hl7.org/fhir/StructureDefinition/{capability.type}",
            "versioning": capability.versioning,
            "readHistory": capability.read_history,
            "updateCreate": False,
            "conditionalCreate": capability.conditional_create,
            "conditionalRead": capability.conditional_read,
            "conditionalUpdate": False,
            "conditionalDelete": "not-supported",
        }
        if capability.interactions:  # R4 JSON never carries an empty array
            entry["interaction"] = [{"code": code} for code in capability.interactions]
        if capability.documentation:
            entry["documentation"] = capability.documentation
        if capability.search_include:
            entry["searchInclude"] = list(capability.search_include)
        if capability.search_params:
            entry["searchParam"] = [_search_param(p) for p in capability.search_params]
        if capability.operations:
            entry["operation"] = [_operation(op) for op in capability.operations]
        return entry


def _search_param(param: SearchParam) -> dict[str, Any]:
    rendered: dict[str, Any] = {"name": param.name, "type": param.type}
    if param.definition:
        rendered["definition"] = param.definition
    if param.documentation:
        rendered["documentation"] = param.documentation
    return rendered


def _operation(op: Operation) -> dict[str, Any]:
    rendered: dict[str, Any] = {"name": op.name, "definition": op.definition}
    if op.documentation:
        rendered["documentation"] = op.documentation
    return rendered
