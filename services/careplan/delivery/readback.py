"""Reading a delivered resource back and naming what the EHR dropped.

Some EHRs accept a CarePlan and silently keep only the elements they model
(activities without `scheduledTiming`, no contained Goals, ...). The plan is then
"delivered" but not the plan the clinician approved, so after each success the
dispatcher reads it back once and records every element path that was sent but is
missing from what the EHR returns. Values are not compared: the EHR legitimately
rewrites references, ids, `meta` and may normalise narrative whitespace.
"""

from __future__ import annotations

from typing import Any

IGNORED = frozenset({"id", "meta"})


def element_paths(node: Any, prefix: str) -> set[str]:
    """Leaf element paths, array positions kept: {'CarePlan.activity[0].detail.code.coding[0].code', ...}."""
    paths: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            paths |= element_paths(value, f"{prefix}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            paths |= element_paths(value, f"{prefix}[{index}]")
    else:
        paths.add(prefix)
    return paths


def dropped_elements(sent: dict[str, Any], stored: dict[str, Any]) -> list[str]:
    """Element paths present in `sent` and absent from `stored` (sorted; empty when nothing was lost)."""
    kind = sent.get("resourceType", "Resource")

    def paths(resource: dict[str, Any]) -> set[str]:
        return element_paths({k: v for k, v in resource.items() if k not in IGNORED}, kind)

    return sorted(paths(sent) - paths(stored))
