"""Walking the references inside a FHIR resource: the one walker, and what is built on it.

A Reference (the data type) is a JSON object whose `reference` is a string; it may sit at
any depth, in any element. `map_references` visits each one, in document order, and
builds a copy of the resource with each replaced by what the caller makes of it. On it:

- `rewrite_references`: a transaction Bundle's placeholders (R4 http.html#trules). A
  transaction may name a resource it creates by a temporary `fullUrl` (`urn:uuid:...` or
  `urn:oid:...`) and point other entries at it; when the server assigns the real id,
  every reference holding the placeholder becomes `Type/id`.
- `referenced_ids`: which resources of given types a resource points to (`references_in`,
  the same walk without the copy).

Canonicals (`definitionCanonical`, `instantiatesCanonical`, ...) are plain strings, never
Reference objects, so they are left alone by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

PLACEHOLDER_PREFIXES = ("urn:uuid:", "urn:oid:")

ReferenceChange = Callable[[dict[str, Any], str], dict[str, Any]]
"""(the Reference, already copied with its own elements mapped; its `reference`) -> what replaces it."""


def is_placeholder(full_url: str | None) -> bool:
    return isinstance(full_url, str) and full_url.startswith(PLACEHOLDER_PREFIXES)


def map_references(node: Any, change: ReferenceChange) -> Any:
    """A copy of `node` in which each Reference is replaced by `change(copy, reference)`.

    Every other value is copied unchanged; `node` itself is never modified."""
    if isinstance(node, dict):
        copied = {key: map_references(value, change) for key, value in node.items()}
        reference = copied.get("reference")
        return change(copied, reference) if isinstance(reference, str) else copied
    if isinstance(node, list):
        return [map_references(item, change) for item in node]
    return node


def rewrite_references(node: Any, mapping: Mapping[str, str]) -> Any:
    """A copy of `node` where each `{"reference": <placeholder>}` names its target as mapped."""

    def placeholder(ref: dict[str, Any], reference: str) -> dict[str, Any]:
        if reference in mapping:
            ref["reference"] = mapping[reference]
        return ref

    return map_references(node, placeholder)


def referenced_ids(resource: Any, resource_types: tuple[str, ...]) -> dict[str, list[str]]:
    """Per type, the ids of every relative reference (`Type/id`) to it in the resource, in order, once each."""
    found: dict[str, list[str]] = {kind: [] for kind in resource_types}
    for reference in references_in(resource):
        if reference.count("/") == 1:
            kind, ident = reference.split("/")
            if kind in found and ident not in found[kind]:
                found[kind].append(ident)
    return found


def references_in(node: Any) -> list[str]:
    """The `reference` of every Reference in `node`, in the order `map_references` visits them (a Reference's
    own elements before it), without copying anything: what reading the references needs."""
    found: list[str] = []
    _collect(node, found)
    return found


def _collect(node: Any, found: list[str]) -> None:
    if isinstance(node, dict):
        for value in node.values():
            if isinstance(value, dict | list):
                _collect(value, found)
        reference = node.get("reference")
        if isinstance(reference, str):
            found.append(reference)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, dict | list):
                _collect(item, found)
