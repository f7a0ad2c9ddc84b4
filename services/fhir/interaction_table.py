"""The one table of the FHIR interactions a service serves, and everything derived from it.

Each `Entry` names the resource type it is on (or the system level), the interaction (a RESTful
one, or an operation `$name` at system, type or instance level), the handler that answers it and,
for an operation, the SMART permission it needs. A service builds one `InteractionTable` and derives
from it, so that none of them can list what the others do not:

- the routes (`install`): one FastAPI route per path and method of the FHIR URL grammar
  (services.fhir.routes), ordered so that a literal segment (`$expand`, `_history`, `Task`) comes
  before a parameter that could take it, and otherwise in the table's order; routes that answer
  ahead of FastAPI (services.fhir.fastread) go first of all;
- the CapabilityStatement (`declare`): each type's interactions (in a fixed order) and operations (in
  the table's), beside what its `ResourceCapability` says of it (profile, search parameters, extensions);
- the OpenAPI document: each route's summary and tag;
- the operation rules of `AccessPolicy` (`operation_rules`); the RESTful interactions need their
  own letter (services.fhir.routes.LETTER).

Not for the routes outside the FHIR base (`/cds-services`, probes): they are no FHIR interaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import FastAPI
from starlette.routing import BaseRoute

from services.fhir.capability import CapabilityBuilder, Operation, ResourceCapability
from services.fhir.deps import ServiceContext
from services.fhir.routes import FHIR_PREFIX

Handler = Callable[..., Any]
AheadRoute = Callable[[ServiceContext], BaseRoute | None]
"""Makes the route that answers an entry ahead of FastAPI's routing, or None when the app has none."""

_PATHS = {"read": "/{resource_id}", "vread": "/{resource_id}/_history/{version_id}",
          "history-instance": "/{resource_id}/_history", "history-type": "/_history", "search-type": "",
          "create": "", "update": "/{resource_id}", "patch": "/{resource_id}", "delete": "/{resource_id}",
          "batch": "", "transaction": ""}
"""Where each RESTful interaction is, after `[base]/[type]` (R4 http.html); a CapabilityStatement lists a type's
interactions in this order."""
_METHODS = {"read": "GET", "vread": "GET", "history-instance": "GET", "history-type": "GET", "search-type": "GET",
            "create": "POST", "update": "PUT", "patch": "PATCH", "delete": "DELETE", "batch": "POST",
            "transaction": "POST"}
_SYSTEM = frozenset({"batch", "transaction"})


@dataclass(frozen=True)
class Permission:
    """The SMART permission an operation needs: `letter` on `resource_type`, or on the type it runs on."""

    letter: str
    resource_type: str | None = None


@dataclass(frozen=True)
class Entry:
    """One interaction on one or more types (or the system) and the handler that serves it."""

    interaction: str
    """read | vread | history-instance | history-type | search-type | create | update | patch | delete |
    batch | transaction, or an operation `$name`."""
    handler: Handler
    types: tuple[str, ...] = ()
    """The types it serves; none for the system level."""
    by_type: bool = False
    """The handler takes `resource_type` from the path: one route `/{resource_type}/...` serves every type of
    `types` (and answers the others itself, 404 not-supported)."""
    method: str = ""
    """The HTTP method, when not the interaction's own (an operation's GET or POST, search by POST `_search`)."""
    instance: bool = False
    """An operation on one resource (`[type]/[id]/$name`) rather than on its type."""
    permission: Permission | None = None
    """What an operation needs (RESTful interactions need their letter)."""
    definition: str = ""
    """An operation's OperationDefinition canonical."""
    documentation: str = ""
    tag: str = "resources"
    """The OpenAPI tag of its route."""
    ahead: AheadRoute | None = None
    """The route that answers it before FastAPI's routing (the fast read), beside the documented one."""

    def __post_init__(self) -> None:
        if self.is_operation:
            if self.permission is None or not self.definition:
                raise ValueError(f"The operation {self.interaction} needs a permission and a definition")
        elif self.interaction not in _PATHS:
            raise ValueError(f"{self.interaction} is no FHIR interaction")
        if (self.interaction in _SYSTEM) != (not self.types) and not self.is_operation:
            raise ValueError(f"{self.interaction} is {'a system' if self.interaction in _SYSTEM else 'a type'} "
                             "interaction")
        if len(self.types) > 1 and not self.by_type:
            raise ValueError(f"{self.interaction} on several types needs a handler that takes the type (by_type)")

    @property
    def is_operation(self) -> bool:
        return self.interaction.startswith("$")

    @property
    def http_method(self) -> str:
        return self.method or _METHODS.get(self.interaction, "POST")

    @property
    def path(self) -> str:
        """The route's path under the FHIR base."""
        head = "/{resource_type}" if self.by_type else "".join(f"/{t}" for t in self.types)
        if self.is_operation:
            return f"{head}{'/{resource_id}' if self.instance else ''}/{self.interaction}"
        if self.interaction == "search-type" and self.http_method == "POST":
            return f"{head}/_search"
        return head + _PATHS[self.interaction]

    @property
    def name(self) -> str:
        """The route's name (and the stem of its OpenAPI operation id)."""
        on = () if self.by_type or not self.types else self.types
        level = ("instance",) if self.instance else ()
        method = (self.http_method.lower(),) if self.http_method != _METHODS.get(self.interaction) else ()
        return "-".join((*on, self.interaction.lstrip("$"), *level, *method))


@dataclass
class InteractionTable:
    """A service's entries and the types they are on (see the module doc)."""

    resources: tuple[ResourceCapability, ...]
    """What the CapabilityStatement says of each type beside its interactions and operations."""
    entries: list[Entry] = field(default_factory=list)

    def add(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            clash = next((e for e in self.entries if (e.path, e.http_method) == (entry.path, entry.http_method)
                          and e.handler != entry.handler), None)
            if clash is not None:
                raise ValueError(f"{entry.http_method} {entry.path} has two handlers: {clash.name}, {entry.name}")
            self.entries.append(entry)

    def operation_rules(self) -> dict[tuple[str, str], tuple[str, str]]:
        """`AccessPolicy.operations`: (type or `*` on a route for any type, name) -> (type or `*`, letter)."""
        rules: dict[tuple[str, str], tuple[str, str]] = {}
        for entry in self.entries:
            if entry.permission is not None:
                needs = (entry.permission.resource_type or "*", entry.permission.letter)
                for on in ("*",) if entry.by_type or not entry.types else entry.types:
                    rules[(on, entry.interaction[1:])] = needs
        return rules

    def declare(self, capability: CapabilityBuilder) -> None:
        """Add each type's interactions and operations, and the system's, to `capability`."""
        described = {r.type: r for r in self.resources}
        undescribed = sorted({t for e in self.entries for t in e.types} - described.keys())
        if undescribed:
            raise ValueError(f"No ResourceCapability describes {', '.join(undescribed)}")
        for resource in self.resources:
            entries = [e for e in self.entries if resource.type in e.types]
            capability.add(replace(resource, interactions=_interactions(entries), operations=_operations(entries)))
        system = [e for e in self.entries if not e.types]
        capability.system_interactions = _interactions(system)
        capability.system_operations = _operations(system)

    def install(self, app: FastAPI, ctx: ServiceContext) -> None:
        """Put the routes into `app`: those answering ahead of FastAPI first, then one per path and method, the
        more literal paths first."""
        ahead = [route for entry in self.entries if entry.ahead for route in (entry.ahead(ctx),) if route]
        app.router.routes[:0] = ahead
        routes: dict[tuple[str, str], list[Entry]] = {}
        for entry in _route_order(self.entries):
            routes.setdefault((entry.path, entry.http_method), []).append(entry)  # batch and transaction: one
        for (path, method), entries in routes.items():
            app.add_api_route(FHIR_PREFIX + path, entries[0].handler, methods=[method],
                              name="-".join(e.name for e in entries), summary=_summary(entries),
                              tags=[entries[0].tag])
            if not path:  # `[base]/` is the base too (rather than a redirect to it)
                app.add_api_route(FHIR_PREFIX + "/", entries[0].handler, methods=[method], include_in_schema=False)


def _route_order(entries: list[Entry]) -> list[Entry]:
    """The table's order, except that an entry goes before any of its method whose path has a parameter where
    its own has a literal (that route would take the literal as an id). Keeping the table's order otherwise
    keeps the Allow header of a 405, which names the methods of the first route whose path matches."""
    ordered: list[Entry] = []
    for entry in entries:
        at = next((i for i, placed in enumerate(ordered)
                   if placed.http_method == entry.http_method and _takes(placed.path, entry.path)), len(ordered))
        ordered.insert(at, entry)
    return ordered


def _takes(general: str, specific: str) -> bool:
    """Whether the route at `general` takes the requests meant for `specific`."""
    general_segments, specific_segments = general.split("/"), specific.split("/")
    return len(general_segments) == len(specific_segments) and general != specific and all(
        g == s or g.startswith("{") for g, s in zip(general_segments, specific_segments, strict=True))


def _summary(entries: list[Entry]) -> str:
    """`read on CarePlan, Task`, `$expand on ValueSet instance`, `batch | transaction on the system`."""
    first = entries[0]
    where = ", ".join(first.types) or "the system"
    return f"{' | '.join(e.interaction for e in entries)} on {where}{' instance' if first.instance else ''}"


def _interactions(entries: Iterable[Entry]) -> tuple[str, ...]:
    """In the order of `_PATHS`, whatever order the entries were added in."""
    found = {e.interaction for e in entries}
    return tuple(interaction for interaction in _PATHS if interaction in found)


def _operations(entries: Iterable[Entry]) -> tuple[Operation, ...]:
    found: dict[str, Operation] = {}
    for entry in entries:
        if entry.is_operation and entry.interaction not in found:
            found[entry.interaction] = Operation(entry.interaction[1:], entry.definition, entry.documentation)
    return tuple(found.values())
