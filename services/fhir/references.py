"""Rewriting placeholder references inside a transaction Bundle (R4 http.html#trules).

A transaction may name a resource it creates by a temporary `fullUrl`
(`urn:uuid:...` or `urn:oid:...`) and point other entries at it. When the server
assigns the real id, every `Reference.reference` holding the placeholder becomes
`Type/id`. Canonicals (`definitionCanonical`, `instantiatesCanonical`, ...) are
plain strings, never Reference objects, so they are left alone by construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PLACEHOLDER_PREFIXES = ("urn:uuid:", "urn:oid:")


def is_placeholder(full_url: str | None) -> bool:
    return isinstance(full_url, str) and full_url.startswith(PLACEHOLDER_PREFIXES)


def rewrite_references(node: Any, mapping: Mapping[str, str]) -> Any:
    """A copy of `node` where each `{"reference": <placeholder>}` names its target as mapped.

    Only objects with a string `reference` are touched (the Reference data type);
    every other value, canonicals included, is copied unchanged."""
    if isinstance(node, dict):
        copied = {key: rewrite_references(value, mapping) for key, value in node.items()}
        target = copied.get("reference")
        if isinstance(target, str) and target in mapping:
            copied["reference"] = mapping[target]
        return copied
    if isinstance(node, list):
        return [rewrite_references(item, mapping) for item in node]
    return node
