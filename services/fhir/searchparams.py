"""Search parameters: their definitions, value extraction at write time, and query parsing.

A service declares its parameters as data (`SearchParamDef`: name, type, FHIRPath).
On every write the store evaluates the expressions with fhirpathpy (compiled once)
and keeps one index row per value; a search is then a set of index lookups.

String values are matched the FHIR way: case- and accent-insensitive starts-with by
default, `:exact` and `:contains` on request.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, NamedTuple

import fhirpathpy
from fhirpathpy.models import models as fhirpath_models

from services.fhir.limits import Limit
from services.fhir.outcome import BadRequest

MAX_PARAM_VALUE_LENGTH = 512
MAX_COUNT = 1000
DEFAULT_COUNT = 20
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@dataclass(frozen=True)
class SearchParamDef:
    name: str
    type: str  # string | token | uri | date | reference
    expression: str
    documentation: str = ""
    targets: tuple[str, ...] = ()
    """For reference parameters: the resource types an `_include` may resolve to."""

    def compiled(self) -> Callable[[Any], list[Any]]:
        return _compile(self.expression)


_compiled_cache: dict[str, Callable[[Any], list[Any]]] = {}


def _compile(expression: str) -> Callable[[Any], list[Any]]:
    if expression not in _compiled_cache:
        compiled = _simple_path(expression)
        if compiled is None:
            path = fhirpathpy.compile(expression, model=fhirpath_models["r4"])
            compiled = lambda resource: path(resource, None)  # noqa: E731 - the one-argument shape of _simple_path
        _compiled_cache[expression] = compiled
    return _compiled_cache[expression]


_PATH = re.compile(r"^([A-Z][A-Za-z]+)((?:\.[a-z][A-Za-z0-9]*)+)$")


_REFERENCE_PREFIX = re.compile(r"^(.+)\.where\(reference\.startsWith\('([A-Za-z]+/)'\)\)$")


def _simple_path(expression: str) -> Callable[[Any], list[Any]] | None:
    """`Type.a.b` without choice types, walked in Python: the same values fhirpathpy finds, without its
    interpreter (index extraction runs on every write, and most parameters are such paths). Also the two
    shapes the services' own parameters add to them: a union of such paths (`A.b | A.c`), and references
    of one type (`A.b.where(reference.startsWith('Patient/'))`, the `patient` parameters)."""
    if " | " in expression:
        branches = [_simple_path(branch.strip()) for branch in expression.split(" | ")]
        walked = [branch for branch in branches if branch is not None]
        return _union(walked) if len(walked) == len(branches) else None
    prefixed = _REFERENCE_PREFIX.match(expression)
    if prefixed:
        inner = _simple_path(prefixed.group(1))
        return _references_to(inner, prefixed.group(2)) if inner else None
    match = _PATH.match(expression)
    if not match:
        return None
    resource_type, steps = match.group(1), match.group(2)[1:].split(".")
    choice = fhirpath_models["r4"]["choiceTypePaths"]
    if any(".".join([resource_type, *steps[: i + 1]]) in choice for i in range(len(steps))):
        return None

    def walk(resource: Any) -> list[Any]:
        if not isinstance(resource, Mapping) or resource.get("resourceType") != resource_type:
            return []
        found: list[Any] = [resource]
        for step in steps:
            found = [v for node in found if isinstance(node, Mapping) and step in node
                     for v in (node[step] if isinstance(node[step], list) else [node[step]])]
        return found

    return walk


def _union(branches: list[Callable[[Any], list[Any]]]) -> Callable[[Any], list[Any]]:
    def union(resource: Any) -> list[Any]:
        found: list[Any] = []
        for branch in branches:
            found += [value for value in branch(resource) if value not in found]  # `|` drops duplicates
        return found

    return union


def _references_to(inner: Callable[[Any], list[Any]], prefix: str) -> Callable[[Any], list[Any]]:
    def references(resource: Any) -> list[Any]:
        return [value for value in inner(resource) if isinstance(value, Mapping)
                and isinstance(value.get("reference"), str) and value["reference"].startswith(prefix)]

    return references


def normalise(text: str) -> str:
    """Case- and accent-insensitive form used for string search: 'Mésothérapie' -> 'mesotherapie'."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold().strip()


class IndexValue(NamedTuple):
    """One value a search parameter takes in a resource: one index row. A tuple, not a dataclass: every write
    builds one per value and `extract` drops duplicates by hashing them."""

    system: str | None = None
    value: str | None = None
    norm: str | None = None
    low: datetime | None = None
    high: datetime | None = None


def extract(defn: SearchParamDef, resource: Mapping[str, Any]) -> list[IndexValue]:
    """The index values of one parameter for one resource."""
    values: list[IndexValue] = []
    for item in defn.compiled()(resource):
        values.extend(_index_values(defn.type, item))
    unique = list(dict.fromkeys(values))
    return unique


def _index_values(kind: str, item: Any) -> Iterable[IndexValue]:
    if kind == "string":
        texts: list[str] = []
        if isinstance(item, str):
            texts = [item]
        elif isinstance(item, Mapping):  # HumanName / Address / CodeableConcept text parts
            texts = [v for v in item.values() if isinstance(v, str)]
        for text in texts:
            yield IndexValue(value=text[:1024], norm=normalise(text)[:1024])
    elif kind == "token":
        yield from _token_values(item)
    elif kind == "uri":
        if isinstance(item, str):
            yield IndexValue(value=item[:1024])
    elif kind == "reference":
        if isinstance(item, Mapping) and isinstance(item.get("reference"), str):
            yield IndexValue(value=item["reference"][:1024])
        elif isinstance(item, str):  # canonical
            yield IndexValue(value=item[:1024])
    elif kind == "date":
        bounds = _date_bounds(item)
        if bounds:
            yield IndexValue(low=bounds[0], high=bounds[1])


def _token_values(item: Any) -> Iterable[IndexValue]:
    if isinstance(item, bool):
        yield IndexValue(value="true" if item else "false")
    elif isinstance(item, str):
        yield IndexValue(value=item[:1024])
    elif isinstance(item, Mapping):
        if "coding" in item:  # CodeableConcept
            for coding in item["coding"]:
                yield from _token_values(coding)
        elif "code" in item:  # Coding
            yield IndexValue(system=item.get("system"), value=str(item["code"])[:1024])
        elif "value" in item:  # Identifier / ContactPoint
            yield IndexValue(system=item.get("system"), value=str(item["value"])[:1024])


def _date_bounds(item: Any) -> tuple[datetime, datetime] | None:
    if isinstance(item, Mapping):  # Period
        start = _date_bounds(item["start"]) if "start" in item else None
        end = _date_bounds(item["end"]) if "end" in item else None
        if not start and not end:
            return None
        return (start[0] if start else datetime.min.replace(tzinfo=UTC),
                end[1] if end else datetime.max.replace(tzinfo=UTC))
    if isinstance(item, str):
        try:
            return parse_date_range(item)
        except ValueError:
            return None
    return None


def parse_date_range(text: str) -> tuple[datetime, datetime]:
    """The instant range a FHIR date/dateTime covers: '2025-03' is all of March 2025 (UTC).

    ValueError when `text` is no date, or one whose range does not fit the years 1 to 9999 in UTC
    ('9999-12-31' would end in the year 10000)."""
    try:
        return _date_range(text)
    except OverflowError:
        raise ValueError(f"{text[:40]!r} reaches beyond the years 1 to 9999") from None


def _date_range(text: str) -> tuple[datetime, datetime]:
    if re.fullmatch(r"\d{4}", text):
        start = datetime(int(text), 1, 1, tzinfo=UTC)
        return start, datetime(int(text) + 1, 1, 1, tzinfo=UTC) - timedelta(microseconds=1)
    if re.fullmatch(r"\d{4}-\d{2}", text):
        year, month = map(int, text.split("-"))
        start = datetime(year, month, 1, tzinfo=UTC)
        nxt = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
        return start, nxt - timedelta(microseconds=1)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        day = date.fromisoformat(text)
        start = datetime.combine(day, time.min, UTC)
        return start, start + timedelta(days=1) - timedelta(microseconds=1)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    if moment.second == 0 and moment.microsecond == 0 and re.fullmatch(r".*T\d{2}:\d{2}([+-Z].*)?", text):
        return moment, moment + timedelta(minutes=1) - timedelta(microseconds=1)
    if moment.microsecond == 0 and "." not in text:
        return moment, moment + timedelta(seconds=1) - timedelta(microseconds=1)
    return moment, moment


# ---------------------------------------------------------------- query parsing


@dataclass(frozen=True)
class Criterion:
    """One `name[:modifier]=v1,v2` pair: the values are OR-ed, repeated criteria AND-ed."""

    name: str
    type: str
    modifier: str | None
    values: tuple[str, ...]


@dataclass(frozen=True)
class SortKey:
    name: str
    descending: bool


@dataclass
class SearchQuery:
    resource_type: str
    criteria: list[Criterion] = field(default_factory=list)
    sort: list[SortKey] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    summary: str | None = None
    elements: list[str] = field(default_factory=list)
    total: str | None = None
    includes: list[tuple[str, str, str | None, bool]] = field(default_factory=list)
    """(source type, parameter, target type, iterate)"""
    cursor: str | None = None
    unknown: list[str] = field(default_factory=list)
    passthrough: list[tuple[str, str]] = field(default_factory=list)
    """The parameters to repeat in paging links (everything but the cursor)."""


RESULT_PARAMS = {"_count", "_sort", "_summary", "_elements", "_total", "_include", "_include:iterate",
                 "_revinclude", "_format", "_pretty", "_cursor"}
COMMON_PARAMS = {"_id": "token", "_lastUpdated": "date"}
STRING_MODIFIERS = {None, "exact", "contains", "missing"}
TOKEN_MODIFIERS = {None, "not", "missing"}
OTHER_MODIFIERS = {None, "missing"}


def parse_query(
    resource_type: str,
    pairs: Sequence[tuple[str, str]],
    params: Mapping[str, SearchParamDef],
    *,
    sortable: Iterable[str] = (),
    includable: Mapping[str, SearchParamDef] | None = None,
    all_includable: Mapping[str, Mapping[str, SearchParamDef]] | None = None,
    max_includes: Limit | None = None,
) -> SearchQuery:
    """Parse the query string of a search; malformed values are 400, unknown names are collected.

    Repeated `_include`s count once; more distinct ones than `max_includes` are 400 (each costs a query)."""
    query = SearchQuery(resource_type=resource_type)
    sortable = set(sortable) | {"_lastUpdated", "_id"}
    for raw_name, value in pairs:
        if len(value) > MAX_PARAM_VALUE_LENGTH:
            raise BadRequest(f"The value of search parameter '{raw_name}' is longer than {MAX_PARAM_VALUE_LENGTH} "
                             "characters", expression=raw_name, code="too-long")
        if raw_name == "_cursor":
            query.cursor = value
            continue
        query.passthrough.append((raw_name, value))
        name, _, modifier = raw_name.partition(":")
        if raw_name in RESULT_PARAMS or name in RESULT_PARAMS:
            _apply_result_param(query, raw_name, value, sortable, includable, all_includable or {})
            continue
        kind = COMMON_PARAMS.get(name) or (params[name].type if name in params else None)
        if kind is None:
            query.unknown.append(raw_name)
            continue
        allowed = STRING_MODIFIERS if kind == "string" else TOKEN_MODIFIERS if kind == "token" else OTHER_MODIFIERS
        if (modifier or None) not in allowed:
            raise BadRequest(f"Modifier ':{modifier}' is not supported on {kind} parameter '{name}'",
                             expression=raw_name)
        values = tuple(v.replace("\\,", ",") for v in re.split(r"(?<!\\),", value))
        if modifier == "missing":
            if value not in ("true", "false"):
                raise BadRequest(f"'{raw_name}' takes true or false", expression=raw_name)
        elif kind == "date":
            for v in values:
                _parse_date_value(name, v)
        elif name == "_id":
            for v in values:
                if not FHIR_ID.match(v):
                    raise BadRequest(f"'{v}' is not a valid FHIR id", expression="_id")
        if not value and modifier != "missing":
            raise BadRequest(f"Search parameter '{name}' has an empty value", expression=raw_name)
        query.criteria.append(Criterion(name=name, type=kind, modifier=modifier or None, values=values))
    query.includes = list(dict.fromkeys(query.includes))
    if max_includes is not None:
        max_includes.check_count(query.includes, "Distinct _include and _include:iterate values", "_include",
                                 status=400)
    return query


def _apply_result_param(query: SearchQuery, raw_name: str, value: str, sortable: set[str],
                        includable: Mapping[str, SearchParamDef] | None,
                        all_includable: Mapping[str, Mapping[str, SearchParamDef]]) -> None:
    name = raw_name
    if name == "_count":
        if not value.isdigit():
            raise BadRequest("_count must be a non-negative integer", expression="_count")
        query.count = min(int(value), MAX_COUNT)
    elif name == "_sort":
        for part in value.split(","):
            descending = part.startswith("-")
            key = part[1:] if descending else part
            if key not in sortable:
                raise BadRequest(f"Cannot sort by '{key}'; sortable: {', '.join(sorted(sortable))}",
                                 expression="_sort")
            query.sort.append(SortKey(key, descending))
    elif name == "_summary":
        if value not in ("true", "false", "count", "data", "text"):
            raise BadRequest("_summary must be one of true, false, count, data, text", expression="_summary")
        query.summary = None if value == "false" else value
    elif name == "_elements":
        query.elements = [e.strip() for e in value.split(",") if e.strip()]
    elif name == "_total":
        if value not in ("none", "estimate", "accurate"):
            raise BadRequest("_total must be none, estimate or accurate", expression="_total")
        query.total = value
    elif name in ("_include", "_include:iterate"):
        parts = value.split(":")
        if len(parts) not in (2, 3):
            raise BadRequest(f"_include '{value}' must be Type:parameter[:targetType]", expression=name)
        source, param = parts[0], parts[1]
        table = all_includable.get(source) if name.endswith("iterate") else (
            includable if source == query.resource_type else None)
        if not table or param not in table:
            raise BadRequest(f"_include '{value}' is not supported", expression=name)
        query.includes.append((source, param, parts[2] if len(parts) == 3 else None, name.endswith("iterate")))
    elif name in ("_format", "_pretty"):
        pass
    else:
        query.unknown.append(raw_name)


def _parse_date_value(name: str, value: str) -> tuple[str, datetime, datetime]:
    prefix = value[:2] if value[:2] in PREFIXES else "eq"
    text = value[2:] if value[:2] in PREFIXES else value
    if prefix in ("sa", "eb", "ap"):
        raise BadRequest(f"Prefix '{prefix}' is not supported on '{name}'", expression=name)
    try:
        low, high = parse_date_range(text)
    except ValueError:
        raise BadRequest(f"'{value}' is not a valid date for '{name}'", expression=name) from None
    return prefix, low, high


def parse_date_criterion(name: str, value: str) -> tuple[str, datetime, datetime]:
    return _parse_date_value(name, value)
