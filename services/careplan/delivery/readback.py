"""Reading a delivered resource back and naming what the EHR dropped.

Some EHRs accept a CarePlan and silently keep only the elements they model
(activities without `scheduledTiming`, no contained Goals, ...). The plan is then
"delivered" but not the plan the clinician approved, so after each success the
dispatcher reads it back once and records every element path that was sent but is
missing from what the EHR returns: the resource it answered the write with, or a GET
when the answer did not carry it (see sending.py). Values are not compared: the EHR
legitimately rewrites references, ids, `meta` and may normalise narrative whitespace.
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
    """Element paths present in `sent` and absent from `stored` (sorted; empty when nothing was lost).

    The difference of the two `element_paths` sets, found by walking both resources side by side:
    runs after every delivery, and this way a path is spelt out only where something is missing."""
    kind = sent.get("resourceType", "Resource")
    missing: set[str] = set()
    _compare({k: v for k, v in sent.items() if k not in IGNORED},
             {k: v for k, v in stored.items() if k not in IGNORED}, [kind], missing)
    return sorted(missing)


_ABSENT = object()


def _compare(sent: Any, stored: Any, path: list[str | int], missing: set[str]) -> None:
    """Adds to `missing` the leaf paths under `sent` (reached by `path`) that `stored` does not have.

    Most of what the EHR answers equals what was sent, element for element: an equal subtree (one
    comparison in C) has every path `sent` has, and is not walked."""
    if sent == stored:
        return
    if isinstance(sent, dict | list) and not isinstance(stored, type(sent)):
        missing |= element_paths(sent, _spell(path))  # nothing below here can be in `stored`
    elif isinstance(sent, dict):
        for key, value in sent.items():
            path.append(key)
            _compare(value, stored.get(key, _ABSENT), path, missing)
            path.pop()
    elif isinstance(sent, list):
        for index, value in enumerate(sent):
            path.append(index)
            _compare(value, stored[index] if index < len(stored) else _ABSENT, path, missing)
            path.pop()
    elif stored is _ABSENT or isinstance(stored, dict | list):
        missing.add(_spell(path))


def _spell(path: list[str | int]) -> str:
    """['CarePlan', 'activity', 0, 'detail'] -> 'CarePlan.activity[0].detail', as `element_paths` spells it."""
    head, *steps = path
    return str(head) + "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in steps)
