"""The treatment knowledge a plan is built from, read from the catalog.

A `Protocol` bundles one PlanDefinition with everything it points to: its
ActivityDefinitions (by canonical), the preparations they deliver (Medication) and
the class facts about them (MedicationKnowledge.productType, e.g. retinoid), plus
the screening rule sets (PlanDefinitions of type eca-rule). FHIRPath expressions
are compiled once per protocol version and reused for every assessment.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import fhirpathpy
from fhirpathpy.models import models as fhirpath_models

from services.careplan.answer_conditions import ConditionResults
from services.fhir.outcome import Unprocessable

EXT = "https://fhir.cicatrix.org/StructureDefinition/"
DELIVERED_PREPARATION = EXT + "delivered-preparation"
NOT_SAME_DAY_AS = EXT + "not-same-day-as"
MINIMUM_INTERVAL = EXT + "minimum-interval"
NOT_SAME_DAY_GAP = EXT + "not-same-day-gap"
NOT_SAME_DAY_REASON = EXT + "not-same-day-reason"
SCHEDULING_RANK = EXT + "scheduling-rank"
COURSE_BREAK = EXT + "course-break"
GOAL_CONDITION = EXT + "goal-condition"
CLINIC_DEFAULT = EXT + "clinic-default"
PLAN_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/plan-definition-type"

Expression = Callable[[Any, dict[str, Any]], list[Any]]


T = TypeVar("T")


class CatalogReader(typing.Protocol):
    """What knowledge needs of the catalog: the JSON of one REST read or search, and what is derived from it
    once per answer. The HTTP client (catalog_client.CatalogClient) is one; the plan's domain never sees how
    the catalog is reached."""

    async def get(self, path: str, params: Sequence[tuple[str, str]] = ()) -> Any: ...

    async def derived(self, path: str, params: Sequence[tuple[str, str]], name: str,
                      derive: Callable[[Any], T]) -> T:
        """`derive` of that JSON, computed once per answer (see catalog_client.CatalogClient.derived)."""
        ...


def canonical_url(canonical: str) -> str:
    return canonical.split("|", 1)[0]


def versioned(resource: dict[str, Any]) -> str:
    return f"{resource['url']}|{resource['version']}" if resource.get("version") else resource["url"]


def extensions(element: dict[str, Any], url: str) -> list[Any]:
    """The values of `element`'s extensions with this url (value[x] whatever its type)."""
    values: list[Any] = []
    for extension in element.get("extension", []):
        if extension.get("url") == url:
            values.extend(v for k, v in extension.items() if k.startswith("value"))
    return values


def duration_days(duration: dict[str, Any]) -> int:
    factor = {"d": 1, "wk": 7, "mo": 30, "a": 365, "h": 1 / 24, "min": 1 / 1440}
    return round(float(duration.get("value", 0)) * factor.get(duration.get("code", "d"), 1))


def codings(concept: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list((concept or {}).get("coding", []))


@dataclass
class ExpressionCache:
    """FHIRPath compiled once per expression text (protocol versions share unchanged expressions), and results
    remembered by the answers they read (answer_conditions.py)."""

    compiled: dict[str, Expression] = field(default_factory=dict)
    results: ConditionResults = field(default_factory=ConditionResults)

    def evaluate(self, expression: str, resource: Any, variables: dict[str, Any]) -> list[Any]:
        key = self.results.key(expression, resource, variables)
        if key is not None:
            known = self.results.get(key)
            if known is not None:
                return known
        result = self._compiled(expression)(resource, variables)
        if key is not None:
            self.results.put(key, result)
        return result

    def _compiled(self, expression: str) -> Expression:
        function = self.compiled.get(expression)
        if function is None:
            try:
                function = fhirpathpy.compile(expression, model=fhirpath_models["r4"])
            except Exception as exc:  # noqa: BLE001 - fhirpathpy raises plain exceptions on syntax errors
                raise Unprocessable(f"The catalog holds an expression that does not compile: {expression!r} "
                                    f"({exc})", code="invariant") from None
            self.compiled[expression] = function
        return function

    def is_true(self, expression: str, resource: Any, variables: dict[str, Any]) -> bool:
        result = self.evaluate(expression, resource, variables)
        return result == [True]


@dataclass
class Protocol:
    plan: dict[str, Any]
    activities: dict[str, dict[str, Any]]
    """ActivityDefinitions by url and by url|version."""
    medications: dict[str, dict[str, Any]]
    """Medications by 'Medication/<id>'."""
    classes: dict[str, list[dict[str, Any]]]
    """MedicationKnowledge.productType codings by 'Medication/<id>'."""
    screening: list[dict[str, Any]]
    """Screening rule sets (PlanDefinitions of type eca-rule)."""
    contraindications: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """The DetectedIssues MedicationKnowledge.contraindication names, by 'Medication/<id>'."""
    terms: dict[int, Any] = field(default_factory=dict)
    """What planning reads from each action of `plan` (planning.ActivityTerms), by the action's identity, shared
    by every plan drafted from the same catalog answer (`_Protocol.terms`)."""

    @property
    def canonical(self) -> str:
        return versioned(self.plan)

    def activity(self, canonical: str) -> dict[str, Any] | None:
        return self.activities.get(canonical) or self.activities.get(canonical_url(canonical))

    def applicability(self, action: dict[str, Any]) -> list[str]:
        return [c["expression"]["expression"] for c in action.get("condition", [])
                if c.get("kind") == "applicability" and c.get("expression", {}).get("expression")]

    def walk(self) -> Iterator[dict[str, Any]]:
        yield from _walk_actions(self.plan)


class Knowledge:
    """Fetches protocols, the Questionnaire and value sets from the catalog (through its cache)."""

    def __init__(self, catalog: CatalogReader, *, condition_cache_bytes: int = 16 * 1024 * 1024) -> None:
        self.catalog = catalog
        self.expressions = ExpressionCache(results=ConditionResults(condition_cache_bytes))

    async def questionnaire(self, canonical: str) -> dict[str, Any]:
        url, _, version = canonical.partition("|")
        params = [("url", url), ("status", "active")] + ([("version", version)] if version else [])
        newest: dict[str, Any] | None = await self.catalog.derived("/Questionnaire", params, "newest",
                                                                   _newest_questionnaire)
        if newest is None:
            raise Unprocessable(f"The catalog has no active Questionnaire {canonical}", code="not-found")
        return newest

    async def answer_value_sets(self, questionnaire: dict[str, Any]) -> dict[str, dict[tuple[str, str], str]]:
        """The codes of every answer value set the Questionnaire's items name, by canonical."""
        canonicals = {item["answerValueSet"] for item in questionnaire.get("item", []) if item.get("answerValueSet")}
        return {canonical: await self.value_set_codes(canonical) for canonical in sorted(canonicals)}

    async def value_set_codes(self, canonical: str) -> dict[tuple[str, str], str]:
        """(system, code) pairs of a ValueSet's expansion, each with its display ('' when it has none)."""
        url, _, version = canonical.partition("|")
        params = [("url", url), ("count", "1000")] + ([("valueSetVersion", version)] if version else [])
        codes: dict[tuple[str, str], str] = await self.catalog.derived("/ValueSet/$expand", params, "codes",
                                                                        _expansion_codes)
        return codes

    async def protocol_for(self, scar_type: dict[str, Any]) -> Protocol | None:
        """The active clinical protocol whose use context is this scar type, with all it references."""
        token = f"{scar_type.get('system', '')}|{scar_type.get('code', '')}"
        return await self._protocol([("context", token), ("status", "active"),
                                     ("type", f"{PLAN_TYPE_SYSTEM}|clinical-protocol")])

    async def protocol_by_canonical(self, canonical: str) -> Protocol | None:
        url, _, version = canonical.partition("|")
        return await self._protocol([("url", url), ("status", "active")] + ([("version", version)] if version else []))

    async def protocol_by_id(self, plan_id: str) -> Protocol | None:
        return await self._protocol([("_id", plan_id)])

    async def _protocol(self, criteria: list[tuple[str, str]]) -> Protocol | None:
        found: _Protocol | None = await self.catalog.derived("/PlanDefinition", criteria + [
            ("_include", "PlanDefinition:definition"), ("_include:iterate", "ActivityDefinition:product"),
            ("_count", "50")], "protocol", _protocol_of)
        if found is None:
            return None
        medications = found.medications
        if found.missing:
            extra = await self.catalog.get("/Medication", [("_id", ",".join(found.missing)), ("_count", "1000")])
            medications = medications | {f"Medication/{m['id']}": m for m in _resources(extra, "Medication")}
        return await self._with_screening(found.plan, found.activities, medications, found.terms)

    async def formulary(self) -> Protocol:
        """Every active activity and preparation of the catalog with the screening rules, as one Protocol
        without a plan: what orders written outside a plan are screened against (CDS Hooks)."""
        definitions = await self.catalog.get("/ActivityDefinition", [("status", "active"), ("_count", "1000")])
        activities: dict[str, dict[str, Any]] = {}
        for activity in _resources(definitions, "ActivityDefinition"):
            activities[activity["url"]] = activity
            activities[versioned(activity)] = activity
        bundle = await self.catalog.get("/Medication", [("_count", "1000")])
        medications = {f"Medication/{m['id']}": m for m in _resources(bundle, "Medication")}
        return await self._with_screening({}, activities, medications, terms={})  # no plan, so no actions

    async def _with_screening(self, plan: dict[str, Any], activities: dict[str, dict[str, Any]],
                              medications: dict[str, dict[str, Any]], terms: dict[int, Any]) -> Protocol:
        classes, contraindications = await self.catalog.derived(
            "/MedicationKnowledge", [("status", "active"), ("_count", "1000")], "screening", _medication_screening)
        screening = await self.catalog.derived("/PlanDefinition", [
            ("type", f"{PLAN_TYPE_SYSTEM}|eca-rule"), ("status", "active"), ("_count", "100")], "rules", _plans)
        return Protocol(plan=plan, activities=activities, medications=medications, classes=classes,
                        screening=screening, contraindications=contraindications, terms=terms)


@dataclass(frozen=True)
class _Protocol:
    """What one PlanDefinition search answer holds of a protocol (shared by every plan drafted from it, so
    read-only): the newest matching plan, its activities and preparations, and the preparations it names that the
    answer did not include."""

    plan: dict[str, Any]
    activities: dict[str, dict[str, Any]]
    """By url and by url|version."""
    medications: dict[str, dict[str, Any]]
    missing: list[str]
    """Ids of the Medications its actions deliver that the answer did not include."""
    terms: dict[int, Any] = field(default_factory=dict)
    """What planning reads from each action of `plan` and its definition, filled as plans are drafted: by the
    action's identity, which stays the action's own while this answer holds the plan (read-only, like the rest)."""


def _protocol_of(bundle: dict[str, Any]) -> _Protocol | None:
    plans = _resources(bundle, "PlanDefinition", mode="match")
    if not plans:
        return None
    plan = max(plans, key=lambda p: p.get("version", ""))
    activities: dict[str, dict[str, Any]] = {}
    for activity in _resources(bundle, "ActivityDefinition"):
        activities[activity["url"]] = activity
        activities[versioned(activity)] = activity
    medications = {f"Medication/{m['id']}": m for m in _resources(bundle, "Medication")}
    wanted = {ref.get("reference", "") for action in _walk_actions(plan)
              for ref in extensions(action, DELIVERED_PREPARATION)}
    missing = sorted(r.split("/", 1)[1] for r in wanted - set(medications) if r.startswith("Medication/"))
    return _Protocol(plan, activities, medications, missing)


def _medication_screening(bundle: dict[str, Any]) -> tuple[dict[str, list[dict[str, Any]]],
                                                           dict[str, list[dict[str, Any]]]]:
    """MedicationKnowledge's product-type codings and the DetectedIssues it contraindicates, by 'Medication/<id>'."""
    classes: dict[str, list[dict[str, Any]]] = {}
    contraindications: dict[str, list[dict[str, Any]]] = {}
    for item in _resources(bundle, "MedicationKnowledge"):
        contained = {f"#{r.get('id')}": r for r in item.get("contained", []) if isinstance(r, dict)}
        issues = [contained[ref["reference"]] for ref in item.get("contraindication", [])
                  if isinstance(ref, dict) and ref.get("reference") in contained]
        for medication in item.get("associatedMedication", []):
            found = [c for concept in item.get("productType", []) for c in codings(concept)]
            classes.setdefault(medication.get("reference", ""), []).extend(found)
            contraindications.setdefault(medication.get("reference", ""), []).extend(issues)
    return classes, contraindications


def _plans(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return _resources(bundle, "PlanDefinition")


def _newest_questionnaire(bundle: dict[str, Any]) -> dict[str, Any] | None:
    return max(_resources(bundle, "Questionnaire"), key=lambda q: q.get("version", ""), default=None)


def _expansion_codes(expansion: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(c.get("system", ""), c.get("code", "")): c.get("display", "")
            for c in _contains(expansion.get("expansion", {}))}


def _walk_actions(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    def visit(actions: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for action in actions:
            yield action
            yield from visit(action.get("action", []))
    yield from visit(plan.get("action", []))


def _resources(bundle: dict[str, Any], resource_type: str, mode: str | None = None) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in bundle.get("entry", [])
            if entry.get("resource", {}).get("resourceType") == resource_type
            and (mode is None or entry.get("search", {}).get("mode") == mode)]


def _contains(expansion: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for item in expansion.get("contains", []):
        if item.get("code"):
            yield item
        yield from _contains(item)
