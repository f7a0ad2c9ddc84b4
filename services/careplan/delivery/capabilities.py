"""The EHR's CapabilityStatement as one typed model: what the dispatcher may ask of this EHR.

Everything the delivery sends is planned from this model (request_plan.py), so it
holds exactly the facts a request depends on:

    resource types               rest.resource.type
    interactions per type        rest.resource.interaction.code (create, update, read, search-type, ...)
    search parameters            rest.resource.searchParam.name, plus rest.searchParam (every type)
    conditional operations       rest.resource.conditionalCreate / conditionalUpdate
    system interactions          rest.interaction.code (transaction, batch)
    profiles                     rest.resource.supportedProfile and .profile
    formats, patch formats       format, patchFormat
    SMART token URL              rest.security.extension (oauth-uris / token)

Only a `server` mode rest entry counts; an absent element means "not declared", and
not declared means not used: an EHR is taken at its word, in both directions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


@dataclass(frozen=True)
class ResourceCapability:
    """What the EHR declares for one resource type."""

    type: str
    interactions: frozenset[str] = frozenset()
    search_params: frozenset[str] = frozenset()
    conditional_create: bool = False
    conditional_update: bool = False
    update_create: bool = False
    versioned_update: bool = False
    """`versioning: versioned-update`: updates may carry If-Match."""
    profiles: frozenset[str] = frozenset()


@dataclass(frozen=True)
class EhrCapabilities:
    resources: dict[str, ResourceCapability] = field(default_factory=dict)
    system: frozenset[str] = frozenset()
    """System-level interactions: transaction, batch, search-system, history-system."""
    common_search_params: frozenset[str] = frozenset()
    """rest.searchParam: declared for every resource type (`_id`, `_tag`, ... on some servers)."""
    formats: tuple[str, ...] = ()
    patch_formats: tuple[str, ...] = ()
    supported_profiles: frozenset[str] = frozenset()
    """Every profile the statement names (rest.resource.profile / supportedProfile, implementationGuide)."""
    token_url: str | None = None
    software: str | None = None

    def resource(self, resource_type: str) -> ResourceCapability:
        return self.resources.get(resource_type) or ResourceCapability(resource_type)

    def can(self, resource_type: str, interaction: str) -> bool:
        return interaction in self.resource(resource_type).interactions

    def searches(self, resource_type: str, *params: str) -> bool:
        """Whether a search of `resource_type` by all of `params` is declared (search-type and each parameter)."""
        declared = self.resource(resource_type).search_params | self.common_search_params
        return self.can(resource_type, "search-type") and all(param in declared for param in params)

    def conditional_create(self, resource_type: str, *params: str) -> bool:
        """Whether a create may carry If-None-Exist (ifNoneExist) searching by `params`."""
        return (self.can(resource_type, "create") and self.resource(resource_type).conditional_create
                and self.searches(resource_type, *params))

    def profiled(self, profile: str) -> bool:
        """Whether the EHR names `profile` (any version: `url|version` counts as `url`)."""
        return profile in self.supported_profiles


def read_capabilities(statement: dict[str, Any]) -> EhrCapabilities:
    """The model of one CapabilityStatement (defensive: a malformed element reads as not declared)."""
    rest = next((r for r in _dicts(statement.get("rest")) if r.get("mode") == "server"), {})
    resources: dict[str, ResourceCapability] = {}
    profiles: set[str] = {_unversioned(url) for url in _strings(statement.get("implementationGuide"))}
    for entry in _dicts(rest.get("resource")):
        kind = entry.get("type")
        if not isinstance(kind, str):
            continue
        declared = {_unversioned(url) for url in _strings(entry.get("supportedProfile"))}
        if isinstance(entry.get("profile"), str):
            declared.add(_unversioned(entry["profile"]))
        profiles |= declared
        resources[kind] = ResourceCapability(
            type=kind,
            interactions=frozenset(_codes(entry.get("interaction"))),
            search_params=frozenset(p["name"] for p in _dicts(entry.get("searchParam"))
                                    if isinstance(p.get("name"), str)),
            conditional_create=entry.get("conditionalCreate") is True,
            conditional_update=entry.get("conditionalUpdate") is True,
            update_create=entry.get("updateCreate") is True,
            versioned_update=entry.get("versioning") == "versioned-update",
            profiles=frozenset(declared))
    software = statement.get("software")
    if not isinstance(software, dict):
        software = {}
    return EhrCapabilities(
        resources=resources,
        system=frozenset(_codes(rest.get("interaction"))),
        common_search_params=frozenset(p["name"] for p in _dicts(rest.get("searchParam"))
                                       if isinstance(p.get("name"), str)),
        formats=tuple(_strings(statement.get("format"))),
        patch_formats=tuple(_strings(statement.get("patchFormat"))),
        supported_profiles=frozenset(profiles),
        token_url=_token_url(rest.get("security")),
        software=" ".join(str(software[k]) for k in ("name", "version") if isinstance(software.get(k), str)) or None)


def _token_url(security: Any) -> str | None:
    """The SMART token endpoint the statement declares (rest.security.extension oauth-uris / token)."""
    for extension in _dicts((security or {}).get("extension") if isinstance(security, dict) else None):
        if extension.get("url") != OAUTH_URIS:
            continue
        for inner in _dicts(extension.get("extension")):
            if inner.get("url") == "token" and isinstance(inner.get("valueUri"), str):
                return str(inner["valueUri"])
    return None


def _unversioned(url: str) -> str:
    return url.split("|", 1)[0]


def _dicts(value: Any) -> Iterable[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _strings(value: Any) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _codes(value: Any) -> Iterable[str]:
    return [item["code"] for item in _dicts(value) if isinstance(item.get("code"), str)]
