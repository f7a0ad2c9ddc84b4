"""Terminology operations over the catalog's own CodeSystems and ValueSets.

`ValueSet/$expand`, `ValueSet/$validate-code` and `CodeSystem/$lookup` (R4
terminology-service.html), type level and (for ValueSet) instance level, by GET with
a query string or by POST with a Parameters body.

The catalog is not a general terminology server. It enumerates the code systems it
holds, plus concepts a ValueSet lists explicitly (that is how it carries the few
SNOMED CT codes verified against a source: `compose.include.concept` with their
display). Whatever would need a code system it does not hold (a whole external
system, a filter on one) is refused with a 422 OperationOutcome, never guessed.
Expansions are flat lists (hierarchy is answered by `$lookup` parent/child).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from services.fhir.deps import ServiceContext, SessionDep
from services.fhir.interaction_table import Entry, Permission
from services.fhir.jsonio import read_json
from services.fhir.limits import InputLimits
from services.fhir.outcome import BadRequest, NotFound, Unprocessable
from services.fhir.parameters import OperationInput, ParamSpec, from_parameters, from_query, output, part
from services.fhir.responses import FhirResponse
from services.fhir.searchparams import normalise
from services.fhir.store import ResourceStore, instant, utcnow

MAX_EXPANSION = 10_000
"""Concepts one expansion may hold before it is refused as too costly."""
MAX_PAGE = 1000
"""Concepts one $expand answer lists at most (like `_count`); `total` and `offset` tell the rest."""

COMMON_IGNORED = ("displayLanguage", "date")
EXPAND_PARAMS = (
    ParamSpec("url"), ParamSpec("valueSetVersion"), ParamSpec("valueSet", "Resource"), ParamSpec("filter"),
    ParamSpec("count", "integer"), ParamSpec("offset", "integer"), ParamSpec("activeOnly", "boolean"),
    ParamSpec("includeDesignations", "boolean"), ParamSpec("excludeNested", "boolean"),
)
EXPAND_IGNORED = COMMON_IGNORED + ("excludeNotForUI", "excludePostCoordinated", "includeDefinition",
                                   "limitedExpansion", "profile")
LOOKUP_PARAMS = (
    ParamSpec("code"), ParamSpec("system"), ParamSpec("version"), ParamSpec("coding", "Coding"),
    ParamSpec("property", repeats=True),
)
VALIDATE_PARAMS = (
    ParamSpec("url"), ParamSpec("valueSetVersion"), ParamSpec("valueSet", "Resource"), ParamSpec("code"),
    ParamSpec("system"), ParamSpec("systemVersion"), ParamSpec("display"), ParamSpec("coding", "Coding"),
    ParamSpec("codeableConcept", "CodeableConcept"), ParamSpec("abstract", "boolean"),
)
PROPERTY_VALUE_KEYS = ("valueCode", "valueCoding", "valueString", "valueInteger", "valueBoolean",
                       "valueDateTime", "valueDecimal")


# ------------------------------------------------------------------ concepts


@dataclass(frozen=True)
class Concept:
    """A code as an expansion lists it."""

    system: str
    code: str
    display: str | None = None
    version: str | None = None
    abstract: bool = False
    inactive: bool = False
    designation: tuple[dict[str, Any], ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return self.system, self.code

    def contains(self, *, designations: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {"system": self.system}
        if self.version:
            entry["version"] = self.version
        if self.abstract:
            entry["abstract"] = True
        if self.inactive:
            entry["inactive"] = True
        entry["code"] = self.code
        if self.display:
            entry["display"] = self.display
        if designations and self.designation:
            entry["designation"] = list(self.designation)
        return entry


@dataclass
class ConceptDef:
    """One concept of a CodeSystem with its hierarchy resolved (nested concepts and parent/child properties)."""

    code: str
    display: str | None
    definition: str | None
    designation: list[dict[str, Any]]
    properties: list[dict[str, Any]]
    parents: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)

    def property_values(self, name: str) -> list[str]:
        """Values of one property as strings (for filters); `code` and `display` are properties too."""
        if name in ("code", "concept"):
            return [self.code]
        if name == "display":
            return [self.display] if self.display else []
        if name == "parent":
            return list(self.parents)
        if name == "child":
            return list(self.children)
        return [_property_text(p) for p in self.properties if p.get("code") == name]

    @property
    def abstract(self) -> bool:
        return "true" in self.property_values("notSelectable")

    @property
    def inactive(self) -> bool:
        return "true" in self.property_values("inactive") or bool(
            {"retired", "inactive"} & set(self.property_values("status")))


def _property_text(prop: dict[str, Any]) -> str:
    for key in PROPERTY_VALUE_KEYS:
        if key in prop:
            value = prop[key]
            if isinstance(value, bool):
                return "true" if value else "false"
            if isinstance(value, dict):
                return str(value.get("code", ""))
            return str(value)
    return ""


class CodeSystemView:
    """A stored CodeSystem flattened for lookups: code -> ConceptDef, in document order."""

    def __init__(self, resource: dict[str, Any]) -> None:
        self.resource = resource
        self.url: str = resource.get("url", "")
        self.version: str | None = resource.get("version")
        self.content: str = resource.get("content", "complete")
        self.case_sensitive: bool = resource.get("caseSensitive", True) is not False
        self.concepts: dict[str, ConceptDef] = {}
        self._walk(resource.get("concept", []), None)
        self._folded = {code.casefold(): code for code in self.concepts}

    def _walk(self, nodes: Iterable[dict[str, Any]], parent: str | None) -> None:
        for node in nodes:
            code = node["code"]
            self.concepts.setdefault(code, ConceptDef(
                code=code, display=node.get("display"), definition=node.get("definition"),
                designation=list(node.get("designation", [])), properties=list(node.get("property", []))))
            if parent is not None:
                self._link(parent, code)
            for prop in node.get("property", []):
                if prop.get("code") == "parent" and isinstance(prop.get("valueCode"), str):
                    self._link(prop["valueCode"], code)
                elif prop.get("code") == "child" and isinstance(prop.get("valueCode"), str):
                    self._link(code, prop["valueCode"])
            self._walk(node.get("concept", []), code)

    def _link(self, parent: str, child: str) -> None:
        if parent in self.concepts and child not in self.concepts[parent].children:
            self.concepts[parent].children.append(child)
        if child in self.concepts and parent not in self.concepts[child].parents:
            self.concepts[child].parents.append(parent)

    @property
    def canonical(self) -> str:
        return f"{self.url}|{self.version}" if self.version else self.url

    @property
    def enumerable(self) -> bool:
        """`example` and `not-present` systems do not list their codes; `fragment` lists some of them."""
        return self.content in ("complete", "fragment")

    def get(self, code: str) -> ConceptDef | None:
        found = self.concepts.get(code)
        if found is None and not self.case_sensitive:
            canonical = self._folded.get(code.casefold())
            found = self.concepts.get(canonical) if canonical else None
        return found

    def descendants(self, code: str) -> list[str]:
        seen: dict[str, None] = {}
        stack = list(reversed(self.concepts[code].children)) if code in self.concepts else []
        while stack:
            current = stack.pop()
            if current in seen or current not in self.concepts:
                continue
            seen[current] = None
            stack.extend(reversed(self.concepts[current].children))
        return list(seen)

    def ancestors(self, code: str) -> list[str]:
        seen: dict[str, None] = {}
        stack = list(self.concepts[code].parents) if code in self.concepts else []
        while stack:
            current = stack.pop()
            if current not in seen and current in self.concepts:
                seen[current] = None
                stack.extend(self.concepts[current].parents)
        return list(seen)

    def concept(self, defn: ConceptDef, *, display: str | None = None,
                designation: Sequence[dict[str, Any]] = ()) -> Concept:
        return Concept(system=self.url, code=defn.code, display=display or defn.display, version=self.version,
                       abstract=defn.abstract, inactive=defn.inactive,
                       designation=tuple(designation or defn.designation))


# ------------------------------------------------------------------ expansion


@dataclass
class Expansion:
    concepts: list[Concept]
    used_systems: list[str]
    """`url|version` of every held CodeSystem the expansion drew on (reported as `used-codesystem`)."""


def split_canonical(canonical: str, version: str | None = None) -> tuple[str, str | None]:
    """'url|1.0' -> ('url', '1.0'); an explicit `version` argument wins."""
    url, bar, embedded = canonical.partition("|")
    return url, version or (embedded if bar and embedded else None)


class Terminology:
    """Expansion and lookups over what one database session sees."""

    def __init__(self, session: Session, store: ResourceStore) -> None:
        self.session = session
        self.store = store
        self._systems: dict[tuple[str, str | None], CodeSystemView | None] = {}
        self._used: dict[str, None] = {}

    def code_system(self, url: str, version: str | None = None) -> CodeSystemView | None:
        key = (url, version)
        if key not in self._systems:
            stored = self.store.find_canonical(self.session, url, version, "CodeSystem")
            self._systems[key] = CodeSystemView(stored.parsed()) if stored else None
        return self._systems[key]

    def value_set(self, canonical: str, version: str | None = None) -> dict[str, Any] | None:
        url, version = split_canonical(canonical, version)
        stored = self.store.find_canonical(self.session, url, version, "ValueSet")
        return stored.parsed() if stored else None

    def expand(self, value_set: dict[str, Any]) -> Expansion:
        self._used = {}
        concepts = self._expand(value_set, (), "ValueSet")
        return Expansion(concepts=list(concepts.values()), used_systems=list(self._used))

    # -- compose ------------------------------------------------------------------------------------

    def _expand(self, value_set: dict[str, Any], stack: tuple[str, ...],
                where: str) -> dict[tuple[str, str], Concept]:
        url = value_set.get("url", "")
        if url and url in stack:
            raise Unprocessable(f"ValueSet {url} imports itself (via {' -> '.join(stack)})", code="processing",
                                expression=where)
        stack = (*stack, url)
        compose = value_set.get("compose")
        if not compose:
            contains = (value_set.get("expansion") or {}).get("contains")
            if contains:
                return {c.key: c for c in _flatten_contains(contains)}
            raise Unprocessable(f"ValueSet {url or '(inline)'} has no compose to expand", code="not-supported",
                                expression=f"{where}.compose")
        result: dict[tuple[str, str], Concept] = {}
        for i, include in enumerate(compose.get("include", [])):
            for concept in self._include(include, stack, f"{where}.compose.include[{i}]"):
                result.setdefault(concept.key, concept)
                if len(result) > MAX_EXPANSION:
                    raise Unprocessable(f"The expansion exceeds {MAX_EXPANSION} concepts", code="too-costly",
                                        expression=where)
        for i, exclude in enumerate(compose.get("exclude", [])):
            for concept in self._include(exclude, stack, f"{where}.compose.exclude[{i}]"):
                result.pop(concept.key, None)
        return result

    def _include(self, include: dict[str, Any], stack: tuple[str, ...], where: str) -> list[Concept]:
        """One include (or exclude): a system part and/or imported value sets, intersected."""
        imported = [self._imported(canonical, stack, f"{where}.valueSet[{j}]")
                    for j, canonical in enumerate(include.get("valueSet", []))]
        if "system" in include:
            selected = self._system_part(include, where)
        elif imported:
            selected = list(imported.pop(0).values())
        else:
            raise Unprocessable("An include needs a system or a valueSet", code="invalid", expression=where)
        return [c for c in selected if all(c.key in other for other in imported)]

    def _imported(self, canonical: str, stack: tuple[str, ...], where: str) -> dict[tuple[str, str], Concept]:
        value_set = self.value_set(canonical)
        if value_set is None:
            raise Unprocessable(f"The imported ValueSet {canonical} is not held by the catalog", code="not-found",
                                expression=where)
        return self._expand(value_set, stack, where)

    def _system_part(self, include: dict[str, Any], where: str) -> list[Concept]:
        system, version = include["system"], include.get("version")
        held = self.code_system(system, version)
        if held is not None:
            self._used[held.canonical] = None
        if include.get("concept"):
            return self._listed(include, held, where)
        if held is None:
            raise Unprocessable(
                f"CodeSystem {system}{'|' + version if version else ''} is not held by the catalog, so it cannot "
                "be enumerated; list the concepts in compose.include.concept", code="not-supported",
                expression=f"{where}.system")
        if not held.enumerable:
            raise Unprocessable(f"CodeSystem {system} has content '{held.content}': its codes are not listed",
                                code="not-supported", expression=f"{where}.system")
        codes: Iterable[str] = held.concepts
        for i, rule in enumerate(include.get("filter", [])):
            allowed = set(_apply_filter(held, rule, f"{where}.filter[{i}]"))
            codes = [code for code in codes if code in allowed]
        return [held.concept(held.concepts[code]) for code in codes]

    @staticmethod
    def _listed(include: dict[str, Any], held: CodeSystemView | None, where: str) -> list[Concept]:
        """Explicit concepts: checked against the system when the catalog holds it, taken as listed otherwise."""
        listed = []
        for i, item in enumerate(include["concept"]):
            if held is None:
                listed.append(Concept(system=include["system"], code=item["code"], display=item.get("display"),
                                      version=include.get("version"),
                                      designation=tuple(item.get("designation", []))))
                continue
            defn = held.get(item["code"])
            if defn is None:
                raise Unprocessable(f"'{item['code']}' is not a code of CodeSystem {held.canonical}",
                                    code="code-invalid", expression=f"{where}.concept[{i}].code")
            listed.append(held.concept(defn, display=item.get("display"), designation=item.get("designation", [])))
        return listed


def _flatten_contains(contains: Iterable[dict[str, Any]]) -> Iterator[Concept]:
    for item in contains:
        if "code" in item and "system" in item:
            yield Concept(system=item["system"], code=item["code"], display=item.get("display"),
                          version=item.get("version"), abstract=item.get("abstract", False),
                          inactive=item.get("inactive", False), designation=tuple(item.get("designation", [])))
        yield from _flatten_contains(item.get("contains", []))


def _apply_filter(cs: CodeSystemView, rule: dict[str, Any], where: str) -> list[str]:
    """The codes of `cs` one compose filter selects (R4 filter-operator codes)."""
    prop, op, value = rule.get("property", ""), rule.get("op", ""), rule.get("value", "")
    if prop in ("concept", "code") and op in ("is-a", "descendent-of", "is-not-a", "generalizes"):
        anchor = cs.get(value)
        if anchor is None:
            raise Unprocessable(f"Filter value '{value}' is not a code of {cs.canonical}", code="code-invalid",
                                expression=f"{where}.value")
        code = anchor.code
        if op == "generalizes":
            return [code, *cs.ancestors(code)]
        below = cs.descendants(code)
        subsumed = [code, *below] if op != "descendent-of" else below
        if op == "is-not-a":
            excluded = set(subsumed)
            return [c for c in cs.concepts if c not in excluded]
        return subsumed
    if op in ("=", "in", "not-in", "regex", "exists"):
        test = _value_test(op, value, where)
        return [defn.code for defn in cs.concepts.values() if test(defn.property_values(prop))]
    raise Unprocessable(f"Filter '{prop} {op}' is not supported on {cs.canonical}", code="not-supported",
                        expression=f"{where}.op")


def _value_test(op: str, value: str, where: str) -> Callable[[list[str]], bool]:
    """A property-value filter as a predicate over a concept's values of that property."""
    if op == "=":
        return lambda values: value in values
    if op in ("in", "not-in"):
        wanted = {v.strip() for v in value.split(",")}
        return lambda values: bool(wanted & set(values)) == (op == "in")
    if op == "exists":
        return lambda values: bool(values) == (value == "true")
    try:
        pattern = re.compile(value)
    except re.error:
        raise Unprocessable(f"Filter regex '{value}' is not a valid expression", code="invalid",
                            expression=f"{where}.value") from None
    return lambda values: any(pattern.fullmatch(v) for v in values)


def matches_text(concept: Concept, text: str) -> bool:
    """`filter`: every word of the text occurs in the display or the code, ignoring case and accents."""
    haystack = normalise(f"{concept.display or ''} {concept.code}")
    return all(word in haystack for word in normalise(text).split())


# ------------------------------------------------------------------ operations


class TerminologyOperations:
    """The operations as routes; one instance per app, stateless between requests."""

    def __init__(self, store: ResourceStore) -> None:
        self.store = store

    def entries(self) -> list[Entry]:
        """Each operation by GET and by POST (one route per method: distinct OpenAPI operation ids); they read."""
        hl7 = "http://hl7.org/fhir/OperationDefinition/"
        operations = (("ValueSet", "$expand", self.expand, False), ("ValueSet", "$expand", self.expand_instance, True),
                      ("ValueSet", "$validate-code", self.validate_code, False),
                      ("ValueSet", "$validate-code", self.validate_code_instance, True),
                      ("CodeSystem", "$lookup", self.lookup, False))
        return [Entry(name, handler, (resource_type,), method=method, instance=instance, permission=Permission("r"),
                      definition=f"{hl7}{resource_type}-{name[1:]}", tag="terminology")
                for resource_type, name, handler, instance in operations for method in ("GET", "POST")]

    # -- routes -------------------------------------------------------------------------------------

    async def expand(self, request: Request, session: SessionDep) -> Response:
        """ValueSet/$expand by `url` (+ `valueSetVersion`) or an inline `valueSet`."""
        return await _answer(request, session, EXPAND_PARAMS, EXPAND_IGNORED, self.run_expand, None)

    async def expand_instance(self, resource_id: str, request: Request, session: SessionDep) -> Response:
        """ValueSet/{id}/$expand."""
        return await _answer(request, session, EXPAND_PARAMS, EXPAND_IGNORED, self.run_expand, resource_id)

    async def validate_code(self, request: Request, session: SessionDep) -> Response:
        """ValueSet/$validate-code: is this code (coding, concept) in the value set, with a valid display?"""
        return await _answer(request, session, VALIDATE_PARAMS, COMMON_IGNORED, self.run_validate_code, None)

    async def validate_code_instance(self, resource_id: str, request: Request, session: SessionDep) -> Response:
        """ValueSet/{id}/$validate-code."""
        return await _answer(request, session, VALIDATE_PARAMS, COMMON_IGNORED, self.run_validate_code,
                             resource_id)

    async def lookup(self, request: Request, session: SessionDep) -> Response:
        """CodeSystem/$lookup: display, designations and properties (parent/child included) of one code."""
        return await _answer(request, session, LOOKUP_PARAMS, COMMON_IGNORED, self.run_lookup)

    # -- $expand ------------------------------------------------------------------------------------

    def run_expand(self, session: Session, inputs: OperationInput, resource_id: str | None) -> dict[str, Any]:
        terms = Terminology(session, self.store)
        value_set = self._value_set(session, terms, inputs, resource_id)
        offset = _non_negative(inputs, "offset", 0)
        count = min(_non_negative(inputs, "count", MAX_PAGE), MAX_PAGE)
        expansion = terms.expand(value_set)
        concepts = expansion.concepts
        if inputs.get("activeOnly"):
            concepts = [c for c in concepts if not c.inactive]
        text = inputs.get("filter")
        if text:
            concepts = [c for c in concepts if matches_text(c, text)]
        page = concepts[offset: offset + count]
        body: dict[str, Any] = {"identifier": f"urn:uuid:{uuid.uuid4()}", "timestamp": instant(utcnow()),
                                "total": len(concepts)}
        if inputs.has("offset") or inputs.has("count"):
            body["offset"] = offset
        echoed = _echo(inputs, ("filter", "count", "offset", "activeOnly", "includeDesignations", "excludeNested"))
        echoed += [part("used-codesystem", "Uri", used) for used in expansion.used_systems]
        if echoed:
            body["parameter"] = echoed
        designations = bool(inputs.get("includeDesignations"))
        if page:
            body["contains"] = [c.contains(designations=designations) for c in page]
        result = {k: v for k, v in value_set.items() if k not in ("meta", "expansion")}
        result["expansion"] = body
        return result

    def _value_set(self, session: Session, terms: Terminology, inputs: OperationInput,
                   resource_id: str | None) -> dict[str, Any]:
        """The value set an operation works on: the instance, an inline `valueSet`, or `url`."""
        if resource_id is not None:
            return self.store.read(session, "ValueSet", resource_id).parsed()
        inline = inputs.get("valueSet")
        if inline is not None:
            if not isinstance(inline, dict) or inline.get("resourceType") != "ValueSet":
                raise BadRequest("Parameter 'valueSet' must be a ValueSet", expression=inputs.expression("valueSet"))
            return inline
        url = inputs.get("url")
        if not url:
            raise BadRequest("Name the value set: 'url' (with 'valueSetVersion'), an inline 'valueSet', or call "
                             "the operation on ValueSet/[id]", expression="url", code="required")
        found = terms.value_set(url, inputs.get("valueSetVersion"))
        if found is None:
            version = inputs.get("valueSetVersion")
            raise NotFound(f"ValueSet {url}{' version ' + version if version else ''} is not held by the catalog",
                           expression=inputs.expression("url"))
        return found

    # -- $lookup ------------------------------------------------------------------------------------

    def run_lookup(self, session: Session, inputs: OperationInput) -> dict[str, Any]:
        system, code, version, where = _lookup_target(inputs)
        held = Terminology(session, self.store).code_system(system, version)
        if held is None:
            raise NotFound(f"CodeSystem {system}{' version ' + version if version else ''} is not held by the "
                           "catalog", expression=where["system"])
        defn = held.get(code)
        if defn is None:
            raise NotFound(f"Code '{code}' is not in CodeSystem {held.canonical}", expression=where["code"])
        wanted = set(inputs.all("property"))
        answer = [part("name", "String", held.resource.get("name") or held.resource.get("title") or held.url)]
        if held.version:
            answer.append(part("version", "String", held.version))
        answer.append(part("display", "String", defn.display or defn.code))
        if not wanted or "designation" in wanted:
            answer += [_designation_part(d) for d in defn.designation]
        answer += [p for p in _property_parts(defn) if not wanted or p["part"][0]["valueCode"] in wanted]
        return output(answer)

    # -- $validate-code -----------------------------------------------------------------------------

    def run_validate_code(self, session: Session, inputs: OperationInput, resource_id: str | None) -> dict[str, Any]:
        terms = Terminology(session, self.store)
        value_set = self._value_set(session, terms, inputs, resource_id)
        codings = _codings_to_validate(inputs)
        members = {c.key: c for c in terms.expand(value_set).concepts}
        label = value_set.get("url") or value_set.get("id") or "the inline ValueSet"
        verdicts = [_verdict(terms, members, coding, label) for coding in codings]
        valid = [v for v in verdicts if v.result]
        chosen = valid[0] if valid else verdicts[0]
        answer = [part("result", "Boolean", bool(valid))]
        messages = [v.message for v in (valid or verdicts) if v.message]
        if messages:
            answer.append(part("message", "String", "; ".join(messages)))
        if chosen.display:
            answer.append(part("display", "String", chosen.display))
        return output(answer)


# ------------------------------------------------------------------ helpers


async def _answer(request: Request, session: Session, specs: Sequence[ParamSpec], ignored: Sequence[str],
                  run: Callable[..., dict[str, Any]], *args: Any) -> Response:
    """Read the operation's inputs, run it in a worker thread (it reads the database), answer its Parameters."""
    inputs = await _inputs(request, specs, ignored)
    return FhirResponse(await run_in_threadpool(run, session, inputs, *args))


async def _inputs(request: Request, specs: Sequence[ParamSpec], ignored: Sequence[str]) -> OperationInput:
    """The operation's inputs, from the query string (GET) or a Parameters body (POST)."""
    if request.method == "GET":
        return from_query(parse_qsl(request.url.query, keep_blank_values=True), specs, ignored=ignored)
    body = await read_json(request)
    ctx: ServiceContext = request.app.state.ctx
    InputLimits.of(ctx.settings).check_parameters(body)
    return await ctx.work.run(lambda: from_parameters(body, specs, ignored=ignored))  # R4 validation: CPU


def _non_negative(inputs: OperationInput, name: str, default: int) -> int:
    value = inputs.get(name, default)
    if value < 0:
        raise BadRequest(f"'{name}' must not be negative", expression=inputs.expression(name))
    return int(value)


def _echo(inputs: OperationInput, names: Iterable[str]) -> list[dict[str, Any]]:
    """The request parameters that shaped an expansion, as `expansion.parameter`."""
    echoed = []
    for name in names:
        value = inputs.get(name)
        if value is None:
            continue
        kind = "Boolean" if isinstance(value, bool) else "Integer" if isinstance(value, int) else "String"
        echoed.append(part(name, kind, value))
    return echoed


def _lookup_target(inputs: OperationInput) -> tuple[str, str, str | None, dict[str, str]]:
    """(system, code, version, where each came from) of a $lookup: from `coding` or `system` + `code`."""
    coding = inputs.get("coding")
    if coding is not None:
        where = inputs.expression("coding")
        if not coding.get("system") or not coding.get("code"):
            raise BadRequest("'coding' needs a system and a code", expression=where)
        return (coding["system"], coding["code"], coding.get("version") or inputs.get("version"),
                {"system": where, "code": where})
    system, code = inputs.get("system"), inputs.get("code")
    for name, value in (("code", code), ("system", system)):
        if not value:
            raise BadRequest(f"$lookup needs '{name}' (or a 'coding')", expression=name, code="required")
    return system, code, inputs.get("version"), {"system": inputs.expression("system"),
                                                 "code": inputs.expression("code")}


def _designation_part(designation: dict[str, Any]) -> dict[str, Any]:
    parts = []
    if designation.get("language"):
        parts.append(part("language", "Code", designation["language"]))
    if designation.get("use"):
        parts.append(part("use", "Coding", designation["use"]))
    parts.append(part("value", "String", designation["value"]))
    return {"name": "designation", "part": parts}


def _property_parts(defn: ConceptDef) -> list[dict[str, Any]]:
    """`property` outputs: parent and child from the hierarchy, definition, then the concept's own properties."""
    found: list[tuple[str, str, Any]] = [("parent", "Code", c) for c in defn.parents]
    found += [("child", "Code", c) for c in defn.children]
    if defn.definition:
        found.append(("definition", "String", defn.definition))
    for prop in defn.properties:
        if prop.get("code") in ("parent", "child"):
            continue
        key = next((k for k in PROPERTY_VALUE_KEYS if k in prop), None)
        if key is not None:
            found.append((prop["code"], key[len("value"):], prop[key]))
    return [{"name": "property", "part": [part("code", "Code", code), part("value", kind, value)]}
            for code, kind, value in found]


@dataclass(frozen=True)
class Verdict:
    result: bool
    message: str | None = None
    display: str | None = None


def _codings_to_validate(inputs: OperationInput) -> list[dict[str, Any]]:
    concept = inputs.get("codeableConcept")
    if concept is not None:
        codings = [c for c in concept.get("coding", []) if c.get("code")]
        if not codings:
            raise BadRequest("'codeableConcept' has no coding with a code", expression=inputs.expression(
                "codeableConcept"))
        return codings
    coding = inputs.get("coding")
    if coding is not None:
        if not coding.get("code"):
            raise BadRequest("'coding' has no code", expression=inputs.expression("coding"))
        return [coding]
    if not inputs.get("code"):
        raise BadRequest("$validate-code needs 'code' (with 'system'), 'coding' or 'codeableConcept'",
                         expression="code", code="required")
    coding = {"code": inputs.get("code")}
    for name, key in (("system", "system"), ("systemVersion", "version"), ("display", "display")):
        if inputs.get(name):
            coding[key] = inputs.get(name)
    return [coding]


def _verdict(terms: Terminology, members: dict[tuple[str, str], Concept], coding: dict[str, Any],
             label: str) -> Verdict:
    code, system = coding["code"], coding.get("system")
    if system is None:  # lenient: a bare code is fine when exactly one system of the value set has it
        candidates = [key for key in members if key[1] == code]
        system = candidates[0][0] if len(candidates) == 1 else None
    held = terms.code_system(system) if system else None
    known = held.get(code) if held is not None else None
    if known is not None:
        code = known.code  # the system's own spelling (a caseSensitive=false system accepts others)
    member = members.get((system, code)) if system else None
    if member is None:
        if held is not None and known is None:
            return Verdict(False, f"Unknown code '{code}' in CodeSystem {held.canonical}")
        where = f"{system}#{code}" if system else f"'{code}' (no system given)"
        return Verdict(False, f"{where} is not in ValueSet {label}")
    display = coding.get("display")
    if display and not _display_ok(display, member, held):
        return Verdict(False, f"'{display}' is not a valid display for {system}#{code}; the display is "
                              f"'{member.display}'", member.display)
    return Verdict(True, None, member.display)


def _display_ok(display: str, member: Concept, held: CodeSystemView | None) -> bool:
    """A display is valid when it matches the concept's display or a designation (case and accents aside)."""
    known = [member.display or ""] + [d.get("value", "") for d in member.designation]
    defn = held.get(member.code) if held is not None else None
    if defn is not None:
        known += [defn.display or ""] + [d.get("value", "") for d in defn.designation]
    return normalise(display) in {normalise(k) for k in known if k}
