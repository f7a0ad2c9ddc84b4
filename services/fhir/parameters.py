"""Operation inputs and outputs: the FHIR `Parameters` resource, and the query-string form of GET.

An operation (`$expand`, `$lookup`, `$generate`, ...) declares its input parameters
as data (`ParamSpec`); `from_query` and `from_parameters` turn a GET query string or
a POSTed Parameters body into one `OperationInput`, so a handler never cares how it
was called. Anything malformed is a 400 OperationOutcome whose `expression` names
the parameter (`Parameters.parameter[2]` for a body, the name for a query string).

This is not a general Parameters library: it knows the value types operations on
these services take, and `output` builds the answer side.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.fhir.outcome import BadRequest
from services.fhir.validation import r4_issues

STRING_VALUE_KEYS = ("valueString", "valueUri", "valueCode", "valueCanonical", "valueUrl", "valueId",
                     "valueMarkdown", "valueDateTime", "valueDate", "valueOid", "valueUuid")
INTEGER_VALUE_KEYS = ("valueInteger", "valueUnsignedInt", "valuePositiveInt")
VALUE_KEYS = {
    "string": STRING_VALUE_KEYS,
    "integer": INTEGER_VALUE_KEYS,
    "boolean": ("valueBoolean",),
    "Coding": ("valueCoding",),
    "CodeableConcept": ("valueCodeableConcept",),
}
IGNORED_QUERY_PARAMS = frozenset({"_format", "_pretty"})


@dataclass(frozen=True)
class ParamSpec:
    """One input parameter of an operation: its name, type and whether it repeats.

    `type` is string (any string-like primitive), integer, boolean, Coding,
    CodeableConcept or Resource. On GET a Coding is written `system|code`; a
    CodeableConcept or a Resource can only be POSTed."""

    name: str
    type: str = "string"
    repeats: bool = False


@dataclass
class OperationInput:
    """The parsed inputs: name -> list of values (str, int, bool or a JSON dict)."""

    values: dict[str, list[Any]] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)
    """name -> the expression that locates it in the request, for error messages."""

    def get(self, name: str, default: Any = None) -> Any:
        found = self.values.get(name)
        return found[0] if found else default

    def all(self, name: str) -> list[Any]:
        return list(self.values.get(name, []))

    def has(self, name: str) -> bool:
        return bool(self.values.get(name))

    def expression(self, name: str) -> str:
        return self.where.get(name, name)

    def add(self, name: str, value: Any, where: str) -> None:
        self.values.setdefault(name, []).append(value)
        self.where.setdefault(name, where)


def _specs_by_name(specs: Iterable[ParamSpec]) -> dict[str, ParamSpec]:
    return {spec.name: spec for spec in specs}


def from_query(pairs: Sequence[tuple[str, str]], specs: Iterable[ParamSpec], *,
               ignored: Iterable[str] = ()) -> OperationInput:
    """Inputs from a GET query string; unknown names and unparseable values are 400."""
    table = _specs_by_name(specs)
    skip = IGNORED_QUERY_PARAMS | set(ignored)
    parsed = OperationInput()
    for name, raw in pairs:
        if name in skip:
            continue
        spec = table.get(name)
        if spec is None:
            raise BadRequest(f"Unknown parameter '{name}' for this operation", expression=name,
                             code="not-supported")
        if spec.type in ("CodeableConcept", "Resource"):
            raise BadRequest(f"Parameter '{name}' is a {spec.type}; send it in a Parameters body with POST",
                             expression=name, code="not-supported")
        if name in parsed.values and not spec.repeats:
            raise BadRequest(f"Parameter '{name}' may appear only once", expression=name)
        parsed.add(name, _query_value(spec, raw), name)
    return parsed


def _query_value(spec: ParamSpec, raw: str) -> Any:
    if raw == "":
        raise BadRequest(f"Parameter '{spec.name}' has an empty value", expression=spec.name)
    if spec.type == "integer":
        if not raw.lstrip("-").isdigit():
            raise BadRequest(f"Parameter '{spec.name}' must be an integer, not '{raw}'", expression=spec.name)
        return int(raw)
    if spec.type == "boolean":
        if raw not in ("true", "false"):
            raise BadRequest(f"Parameter '{spec.name}' must be true or false, not '{raw}'", expression=spec.name)
        return raw == "true"
    if spec.type == "Coding":
        system, bar, code = raw.rpartition("|")
        if not bar or not code:
            raise BadRequest(f"Parameter '{spec.name}' is a Coding: write it system|code", expression=spec.name)
        return {"system": system, "code": code} if system else {"code": code}
    return raw


def from_parameters(body: Any, specs: Iterable[ParamSpec], *, ignored: Iterable[str] = ()) -> OperationInput:
    """Inputs from a POSTed Parameters resource, validated as R4 first."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise BadRequest("The body of this operation must be a Parameters resource", expression="resourceType",
                         code="structure")
    issues = r4_issues(body)
    if issues:
        raise BadRequest(issues[0].diagnostics, issues=issues)
    table = _specs_by_name(specs)
    skip = set(ignored)
    parsed = OperationInput()
    for i, parameter in enumerate(body.get("parameter", [])):
        where = f"Parameters.parameter[{i}]"
        name = parameter["name"]
        if name in skip:
            continue
        spec = table.get(name)
        if spec is None:
            raise BadRequest(f"Unknown parameter '{name}' for this operation", expression=f"{where}.name",
                             code="not-supported")
        if name in parsed.values and not spec.repeats:
            raise BadRequest(f"Parameter '{name}' may appear only once", expression=where)
        parsed.add(name, _body_value(spec, parameter, where), where)
    return parsed


def _body_value(spec: ParamSpec, parameter: Mapping[str, Any], where: str) -> Any:
    if spec.type == "Resource":
        if isinstance(parameter.get("resource"), dict):
            return parameter["resource"]
        raise BadRequest(f"Parameter '{spec.name}' must carry a resource", expression=where)
    for key in VALUE_KEYS[spec.type]:
        if key in parameter:
            return parameter[key]
    expected = " or ".join(VALUE_KEYS[spec.type][:3])
    raise BadRequest(f"Parameter '{spec.name}' must have {expected}", expression=where)


# ----------------------------------------------------------------------- output


def part(name: str, value_type: str, value: Any) -> dict[str, Any]:
    """One output parameter `{"name": ..., "value<Type>": ...}`."""
    return {"name": name, f"value{value_type}": value}


def output(parameters: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The Parameters resource an operation answers with."""
    return {"resourceType": "Parameters", "parameter": list(parameters)}
