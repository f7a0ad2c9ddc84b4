"""Hypothesis strategies for hostile FHIR input: malformed resources, mutated assessments, wild search queries.

Random junk alone stops at the first type check, so most strategies here start from
something valid (an example assessment, a catalog resource) and break it in one or a
few places: a value replaced by a hostile one, an element dropped or duplicated, a
type swapped. Hostile values are the ones that have broken FHIR servers before:
control characters and lone surrogates, huge numbers, deep nesting, injection
strings, dates that do not exist, references that point anywhere.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ_EXAMPLES = int(os.environ.get("CICATRIX_FUZZ_EXAMPLES", "0") or 0)
"""`make fuzz` sets this (2000); the normal suite runs the small bounded default of each test."""


def fuzz_settings(default: int) -> settings:
    """Bounded in `make test`, long under `make fuzz`; no deadline (databases are slow to warm up)."""
    return settings(max_examples=FUZZ_EXAMPLES or default, deadline=None, database=None, derandomize=not FUZZ_EXAMPLES,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.filter_too_much, HealthCheck.data_too_large])


HOSTILE_STRINGS = [
    "", " ", "\x00", "\u202e", "\ud800", "null", "None", "NaN", "-1", "0", "1e309", "9" * 400,
    "' OR 1=1 --", "\"; DROP TABLE careplan_resource; --", "%", "_", "\\", "../../etc/passwd", "%2e%2e%2f",
    "<script>alert(1)</script>", "${jndi:ldap://x}", "{{7*7}}", "Patient/../CarePlan/x", "#", "urn:uuid:",
    "http://169.254.169.254/latest/meta-data", "2025-02-30", "2025-13-01", "0000-00-00", "9999-12-31T24:00:00Z",
    "T" * 2000, "é" * 300, "🩹" * 100, "a|b|c", "|", "Patient/", "/CarePlan", "CarePlan/" + "x" * 70,
]

hostile_text = st.one_of(st.sampled_from(HOSTILE_STRINGS), st.text(max_size=40))
hostile_scalar = st.one_of(
    hostile_text, st.integers(min_value=-(2 ** 70), max_value=2 ** 70), st.booleans(), st.none(),
    st.floats(allow_nan=False, allow_infinity=False), st.just(1e308), st.just(-0.0),
)
hostile_json = st.recursive(
    hostile_scalar,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.one_of(hostile_text, st.sampled_from(["resourceType", "id",
                                                                                        "extension", "value"])),
                                               children, max_size=4)),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every location inside a JSON value (dict keys and list indexes), the root excluded."""
    found: list[tuple[Any, ...]] = []
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        found.append((*prefix, key))
        found.extend(_paths(child, (*prefix, key)))
    return found


def _parent(document: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        document = document[key]
    return document


@st.composite
def mutated(draw: st.DrawFn, original: dict[str, Any], max_mutations: int = 3) -> dict[str, Any]:
    """`original` with one to a few elements replaced, dropped, duplicated or retyped."""
    document = copy.deepcopy(original)
    for _ in range(draw(st.integers(min_value=1, max_value=max_mutations))):
        paths = _paths(document)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _parent(document, path), path[-1]
        action = draw(st.sampled_from(["replace", "drop", "duplicate", "wrap", "nest"]))
        if action == "replace":
            parent[key] = draw(hostile_json)
        elif action == "drop":
            del parent[key]
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
        elif action == "wrap":
            parent[key] = [parent[key]] if not isinstance(parent[key], list) else parent[key][:1]
        else:
            parent[key] = {"value": parent[key], draw(hostile_text): draw(hostile_json)}
    return document


def hostile_resource(resource_type: str, base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Resources claiming to be `resource_type`: a valid `base` mutated, or junk with the right resourceType."""
    junk = st.dictionaries(hostile_text, hostile_json, max_size=6).map(lambda d: {**d, "resourceType": resource_type})
    return st.one_of(mutated(base), junk, mutated(base).map(lambda d: {**d, "resourceType": resource_type}))


SEARCH_NAMES = ["_id", "_lastUpdated", "_count", "_sort", "_summary", "_elements", "_total", "_include",
                "_revinclude", "_format", "_cursor", "url", "version", "status", "name", "title", "code", "topic",
                "subject", "patient", "identifier", "date", "focus", "entity", "agent", "action", "outcome",
                "name:contains", "name:exact", "status:not", "subject:missing", "_include:iterate", "code:text",
                "date:above"]
DATE_PREFIXES = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap", "xx"]

search_value = st.one_of(
    hostile_text,
    st.builds(lambda p, d: p + d, st.sampled_from(DATE_PREFIXES),
              st.sampled_from(["2025", "2025-02", "2025-02-30", "2025-01-01T10:00", "2025-01-01T10:00:00+14:00",
                               "now", "-1", "2025-01-01T25:61:61Z"])),
    st.builds(lambda s, c: f"{s}|{c}", hostile_text, hostile_text),
    st.sampled_from(["CarePlan:subject", "*", "PlanDefinition:definition", "-date", "date,-status", "true", "count",
                     "1000000", "0", "-5", "1.5", "Patient/example-1", "CarePlan/x/_history/1"]),
)
search_query = st.lists(st.tuples(st.one_of(st.sampled_from(SEARCH_NAMES), hostile_text), search_value),
                        min_size=1, max_size=6)
