"""The catalog's content files: valid R4, internally consistent, and traceable to the clinical source.

No server is needed: every file under services/catalog/content is read from disk, checked with the R4B models
(round trip), fhirpathpy (every protocol expression, every traceability row) and, when the suite's R4 validator
plugin is active, with the independent Medplum validator.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import fhirpathpy
import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhirpathpy.models import models

ROOT = Path(__file__).resolve().parents[2]
CONTENT = ROOT / "services" / "catalog" / "content"
TRACEABILITY = ROOT / "contracts" / "seed-traceability.md"
BASE = "https://fhir.cicatrix.org"
VERSION = "1.0.0"
EXT = f"{BASE}/StructureDefinition/"
R4 = models["r4"]

CANONICAL_TYPES = {"ActivityDefinition", "PlanDefinition", "Questionnaire", "CodeSystem", "ValueSet",
                   "StructureDefinition"}
CATALOG_TYPES = CANONICAL_TYPES | {"Medication", "MedicationKnowledge"}
KNOWN_EXTENSIONS = {
    EXT + "delivered-preparation": "valueReference",
    EXT + "not-same-day-as": "valueCanonical",
    EXT + "minimum-interval": "valueDuration",
    EXT + "course-break": "valueDuration",
    EXT + "goal-condition": "valueExpression",
    EXT + "clinic-default": "valueString",
    EXT + "not-same-day-gap": "valueDuration",
    EXT + "not-same-day-reason": "valueString",
    EXT + "scheduling-rank": "valuePositiveInt",
    "http://hl7.org/fhir/StructureDefinition/questionnaire-unit": "valueCoding",
    "http://hl7.org/fhir/StructureDefinition/questionnaire-constraint": "extension",
}
CONSTRAINT_PARTS = {"key", "requirements", "severity", "expression", "human", "location"}
"""The sub-extensions of the R4 core questionnaire-constraint extension."""
ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")

# The fixed contract of DESIGN.md: linkId -> (type, required, repeats, answer ValueSet id)
QUESTIONNAIRE_CONTRACT = {
    "scar-type": ("choice", True, False, "scar-type"),
    "body-site": ("choice", True, False, "body-site"),
    "scar-age-months": ("integer", True, False, None),
    "vessels-visible": ("boolean", True, False, None),
    "area-cm2": ("decimal", False, False, None),
    "pregnant": ("boolean", True, False, None),
    "breastfeeding": ("boolean", True, False, None),
    "allergy": ("open-choice", False, True, "substance"),
    "declined-modality": ("choice", False, True, "scar-modality"),
}


def _files() -> list[Path]:
    return sorted(CONTENT.glob("*/*.json"))


FILES = _files()
FILE_IDS = [f"{p.parent.name}/{p.stem}" for p in FILES]


def _load(path: Path, decimals: bool = False) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        return json.load(fh, parse_float=Decimal) if decimals else json.load(fh)


RESOURCES: dict[str, dict[str, Any]] = {f"{p.parent.name}/{p.stem}": _load(p) for p in FILES}
BY_URL: dict[str, dict[str, Any]] = {r["url"]: r for r in RESOURCES.values() if "url" in r}


def _of_type(resource_type: str) -> list[dict[str, Any]]:
    return [r for r in RESOURCES.values() if r["resourceType"] == resource_type]


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(path, key, value) for every key of every object, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}" if path else key
            yield here, key, value
            yield from _walk(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def _objects(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _objects(value)


def _actions(actions: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for action in actions:
        yield action
        yield from _actions(action.get("action", []))


def _concepts(codesystem: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}

    def visit(concepts: list[dict[str, Any]]) -> None:
        for concept in concepts:
            out[concept["code"]] = concept
            visit(concept.get("concept", []))

    visit(codesystem.get("concept", []))
    return out


LOCAL_CODES = {cs["url"]: _concepts(cs) for cs in _of_type("CodeSystem")}


def _resolve(canonical: str) -> dict[str, Any] | None:
    url, _, version = canonical.partition("|")
    resource = BY_URL.get(url)
    if resource is None or (version and resource.get("version") != version):
        return None
    return resource


# ------------------------------------------------------------------------------------------ sample assessments


def _qr(scar_type: str = "atrophic", *, age: int = 24, vessels: bool = False, pregnant: bool = False,
        breastfeeding: bool = False, allergies: tuple[Any, ...] = (), declined: tuple[str, ...] = (),
        area: float | None = 4.5) -> dict[str, Any]:
    def coding(system: str, code: str) -> dict[str, Any]:
        return {"valueCoding": {"system": f"{BASE}/CodeSystem/{system}", "code": code}}

    items = [
        {"linkId": "scar-type", "answer": [coding("scar-type", scar_type)]},
        {"linkId": "body-site", "answer": [coding("body-site", "anterior-upper-chest")]},
        {"linkId": "scar-age-months", "answer": [{"valueInteger": age}]},
        {"linkId": "vessels-visible", "answer": [{"valueBoolean": vessels}]},
        {"linkId": "pregnant", "answer": [{"valueBoolean": pregnant}]},
        {"linkId": "breastfeeding", "answer": [{"valueBoolean": breastfeeding}]},
    ]
    if area is not None:
        items.append({"linkId": "area-cm2", "answer": [{"valueDecimal": area}]})
    if allergies:
        items.append({"linkId": "allergy", "answer": [
            {"valueString": a} if isinstance(a, str) else coding("substance", a[1]) for a in allergies]})
    if declined:
        items.append({"linkId": "declined-modality", "answer": [coding("scar-modality", d) for d in declined]})
    return {"resourceType": "QuestionnaireResponse", "id": "sample",
            "questionnaire": f"{BASE}/Questionnaire/scar-assessment|{VERSION}", "status": "completed",
            "subject": {"reference": "Patient/p1"}, "authored": "2026-01-05T10:00:00+01:00", "item": items}


SAMPLES = {
    "atrophic-old-no-vessels": _qr(),
    "atrophic-recent-vessels": _qr(age=6, vessels=True),
    "atrophic-pregnant-allergic": _qr(pregnant=True, allergies=("camphor", ("substance", "allantoin")),
                                      declined=("mesotherapy",)),
    "hypotrophic-breastfeeding": _qr("hypotrophic", breastfeeding=True, area=None),
    "striae": _qr("striae", age=3),
    "keloid": _qr("keloid"),
}


def _applies(action: dict[str, Any], qr: dict[str, Any]) -> bool:
    conditions = [c for c in action.get("condition", []) if c["kind"] == "applicability"]
    return all(fhirpathpy.evaluate(qr, c["expression"]["expression"], {"resource": qr}, R4) == [True]
               for c in conditions)


# ------------------------------------------------------------------------------------------ files and structure


def test_content_is_present() -> None:
    kinds = Counter(r["resourceType"] for r in RESOURCES.values())
    assert set(kinds) <= CATALOG_TYPES, f"types the catalog does not serve: {set(kinds) - CATALOG_TYPES}"
    assert kinds["ActivityDefinition"] >= 14 and kinds["PlanDefinition"] >= 3 and kinds["Questionnaire"] == 1
    assert kinds["Medication"] == kinds["MedicationKnowledge"] >= 20
    assert (CONTENT / "README.md").is_file()


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_file_identity(path: Path) -> None:
    resource = _load(path)
    assert resource["resourceType"] == path.parent.name
    assert resource["id"] == path.stem
    assert ID_PATTERN.match(resource["id"])


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_r4b_round_trip(path: Path) -> None:
    resource = _load(path)
    model = get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    assert json.loads(model.model_dump_json(by_alias=True, exclude_none=True, exclude_comments=True)) == resource


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_no_r4b_only_elements_or_illegal_codes(path: Path) -> None:
    resource = _load(path)
    keys = {key for _, key, _ in _walk(resource)}
    assert "subjectCanonical" not in keys
    assert "fhir_comments" not in keys
    if resource["resourceType"] == "ActivityDefinition":
        assert resource["kind"] in {"ServiceRequest", "MedicationRequest", "CommunicationRequest", "CarePlan"}
    for where, _key, value in _walk(resource):
        if isinstance(value, str) and re.match(r"^\d{4}-\d{2}-\d{2}T", value):
            assert re.search(r"(Z|[+-]\d{2}:\d{2})$", value), f"{where}: a dateTime with a time needs an offset"


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_metadata_conventions(path: Path) -> None:
    resource = _load(path)
    rtype, rid = resource["resourceType"], resource["id"]
    if rtype in CANONICAL_TYPES:
        assert resource["url"] == f"{BASE}/{rtype}/{rid}"
        assert resource["version"] == VERSION
        assert resource["status"] == "active"
        assert re.match(r"^[A-Z][A-Za-z0-9]*$", resource["name"])
        assert resource["publisher"] == "Cicatrix"
        for element in ("title", "date", "description"):
            assert resource.get(element), f"{rtype}/{rid} has no {element}"
    elif rtype == "Medication":
        assert resource["identifier"] == [{"system": f"{BASE}/Medication", "value": rid}]
        assert resource["status"] == "active"
    elif rtype == "MedicationKnowledge":
        assert resource["associatedMedication"] == [{"reference": f"Medication/{rid}"}]
        assert resource["status"] == "active"


@pytest.mark.parametrize("url,value_type", [(u, t) for u, t in KNOWN_EXTENSIONS.items() if u.startswith(EXT)])
def test_extension_definitions(url: str, value_type: str) -> None:
    sd = _resolve(url)
    assert sd is not None and sd["resourceType"] == "StructureDefinition"
    assert (sd["type"], sd["kind"], sd["derivation"], sd["fhirVersion"]) == (
        "Extension", "complex-type", "constraint", "4.0.1")
    elements = {e["path"]: e for e in sd["differential"]["element"]}
    assert elements["Extension.url"]["fixedUri"] == url
    assert elements["Extension.extension"]["max"] == "0"
    type_code = value_type.removeprefix("value")
    if type_code in ("Canonical", "String", "PositiveInt"):  # primitive types are lower-case
        type_code = type_code[0].lower() + type_code[1:]
    assert [t["code"] for t in elements["Extension.value[x]"]["type"]] == [type_code]
    used_on = {c["expression"] for c in sd["context"]}
    for key, resource in RESOURCES.items():
        for where, k, value in _walk(resource):
            if k == "url" and value == url and "extension[" in where:
                owner = ("PlanDefinition.action" if re.search(r"(^|\.)action\[", where)
                         else "PlanDefinition.goal" if re.search(r"(^|\.)goal\[", where) else resource["resourceType"])
                assert owner in used_on, f"{key}: {url} used on {owner}, outside its context"


def test_url_and_version_are_unique() -> None:
    keys = Counter((r["url"], r["version"]) for r in RESOURCES.values() if "url" in r)
    assert [k for k, n in keys.items() if n > 1] == []


# ------------------------------------------------------------------------------------------ links and codes


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_references_and_canonicals_resolve(path: Path) -> None:
    resource = _load(path)
    contained = {c["id"] for c in resource.get("contained", [])}
    for where, key, value in _walk(resource):
        if key == "reference" and isinstance(value, str):
            if value.startswith("#"):
                assert value[1:] in contained, f"{where}: {value} is not contained"
            else:
                assert value in RESOURCES, f"{where}: {value} is not a content file"
        elif key in {"definitionCanonical", "valueCanonical", "answerValueSet", "valueSet"} or (
                key == "resource" and isinstance(value, str)):
            assert _resolve(value) is not None, f"{where}: {value} does not resolve to a content file"
        elif key == "url" and isinstance(value, str) and re.search(r"extension\[\d+\]\.extension\[\d+\]\.url$", where):
            assert value in CONSTRAINT_PARTS, f"{where}: {value} is not a part of a known complex extension"
        elif key == "url" and isinstance(value, str) and re.search(r"(^|\.)extension\[\d+\]\.url$", where):
            assert value in KNOWN_EXTENSIONS, f"{where}: undocumented extension {value}"
            if value.startswith(EXT):
                assert _resolve(value) is not None, f"{where}: no StructureDefinition for {value}"
        elif isinstance(value, str) and value.startswith(BASE + "/") and key not in {"url", "system"}:
            assert _resolve(value) is not None, f"{where}: {value} does not resolve"
    # every canonical pointing into our base (definitionCanonical etc.) carries the version
    for where, key, value in _walk(resource):
        if key in {"definitionCanonical", "valueCanonical", "answerValueSet"}:
            assert value.endswith(f"|{VERSION}"), f"{where}: canonical without |version"


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_extensions_have_their_value_type(path: Path) -> None:
    for obj in _objects(_load(path)):
        for extension in obj.get("extension", []) if isinstance(obj.get("extension"), list) else []:
            value_keys = [k for k in extension if k.startswith("value")]
            if extension["url"] in CONSTRAINT_PARTS:
                assert len(value_keys) == 1, extension
                continue
            if KNOWN_EXTENSIONS[extension["url"]] == "extension":  # complex: parts, no value of its own
                assert not value_keys and extension["extension"], extension
                continue
            assert value_keys == [KNOWN_EXTENSIONS[extension["url"]]], extension
            if extension["url"] in (EXT + "minimum-interval", EXT + "course-break", EXT + "not-same-day-gap"):
                duration = extension["valueDuration"]
                assert duration["system"] == "http://unitsofmeasure.org" and duration["code"] == "d"
                assert duration["value"] > 0
            if extension["url"] == EXT + "delivered-preparation":
                assert extension["valueReference"]["reference"].startswith("Medication/")


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_local_codes_exist(path: Path) -> None:
    resource = _load(path)
    for obj in _objects(resource):
        system, code = obj.get("system"), obj.get("code")
        if isinstance(system, str) and system.startswith(f"{BASE}/CodeSystem/") and isinstance(code, str):
            assert system in LOCAL_CODES, f"unknown local code system {system}"
            concept = LOCAL_CODES[system].get(code)
            assert concept is not None, f"{system}#{code} is not defined"
            if "display" in obj:
                assert obj["display"] == concept["display"], f"{system}#{code}: display differs from the CodeSystem"
    if resource["resourceType"] == "ValueSet":
        for include in resource["compose"]["include"]:
            assert include["system"] in LOCAL_CODES
            for concept in include.get("concept", []):
                assert concept["code"] in LOCAL_CODES[include["system"]]


@pytest.mark.parametrize("codesystem", _of_type("CodeSystem"), ids=lambda r: r["id"])
def test_codesystems_are_complete(codesystem: dict[str, Any]) -> None:
    assert codesystem["content"] == "complete" and codesystem["caseSensitive"] is True
    concepts = codesystem["concept"]
    assert len({c["code"] for c in concepts}) == len(concepts) == codesystem["count"]
    declared = {p["code"] for p in codesystem.get("property", [])}
    for concept in concepts:
        assert concept.get("display") and concept.get("definition"), concept["code"]
        assert {p["code"] for p in concept.get("property", [])} <= declared


def test_every_codesystem_has_its_valueset() -> None:
    for codesystem in _of_type("CodeSystem"):
        assert _resolve(codesystem["valueSet"]) is not None


def test_never_invented_standard_codes() -> None:
    """Only the standard codes verified in FHIR-REFERENCE.md section 4 (plus FHIR infrastructure codes)."""
    allowed = {
        ("http://snomed.info/sct", "201066002"), ("http://snomed.info/sct", "387305002"),
        ("http://www.whocc.no/atc", "C04AD02"), ("http://www.whocc.no/atc", "A11GA01"),
        ("http://www.whocc.no/atc", "D10AD01"), ("http://www.whocc.no/atc", "C04AC"),
        ("http://www.ama-assn.org/go/cpt", "97033"),
    }
    clinical = {"http://snomed.info/sct", "http://loinc.org", "http://www.whocc.no/atc",
                "http://www.ama-assn.org/go/cpt", "http://www.nlm.nih.gov/research/umls/rxnorm"}
    for key, resource in RESOURCES.items():
        for obj in _objects(resource):
            if obj.get("system") in clinical:
                assert (obj["system"], obj.get("code")) in allowed, f"{key}: unverified code {obj}"


# ------------------------------------------------------------------------------------------ questionnaire


def test_questionnaire_has_exactly_the_contract_link_ids() -> None:
    questionnaire = RESOURCES["Questionnaire/scar-assessment"]
    items = questionnaire["item"]
    assert [i["linkId"] for i in items] == list(QUESTIONNAIRE_CONTRACT)
    for item in items:
        kind, required, repeats, value_set = QUESTIONNAIRE_CONTRACT[item["linkId"]]
        assert item["type"] == kind, item["linkId"]
        assert item.get("required", False) is required, item["linkId"]
        assert item.get("repeats", False) is repeats, item["linkId"]
        assert not ("answerOption" in item and "answerValueSet" in item)  # que-4
        if value_set:
            assert item["answerValueSet"] == f"{BASE}/ValueSet/{value_set}|{VERSION}"
        else:
            assert "answerValueSet" not in item and "answerOption" not in item  # que-5
        assert "item" not in item and "initial" not in item


def test_questionnaire_constraints_compile_and_name_a_question() -> None:
    questionnaire = RESOURCES["Questionnaire/scar-assessment"]
    link_ids = set(QUESTIONNAIRE_CONTRACT)
    rules = [e for e in questionnaire["extension"] if e["url"].endswith("/questionnaire-constraint")]
    assert rules
    for rule in rules:
        parts = {p["url"]: next(v for k, v in p.items() if k.startswith("value")) for p in rule["extension"]}
        assert {"key", "severity", "expression", "human", "location"} <= set(parts), parts
        assert parts["severity"] in ("error", "warning")
        fhirpathpy.compile(parts["expression"], model=models["r4"])
        assert set(re.findall(r"linkId='([^']+)'", parts["expression"] + parts["location"])) <= link_ids


def test_the_hypotrophic_site_warning_names_the_typical_atrophic_sites() -> None:
    """The rule lists the sites in its expression (FHIRPath here has no terminology); they must stay those of the
    ValueSet that states where scars with a tissue deficit never form."""
    questionnaire = RESOURCES["Questionnaire/scar-assessment"]
    rule = next(e for e in questionnaire["extension"]
                if any(p.get("valueId") == "no-hypotrophic-scar-on-thin-hypodermis" for p in e["extension"]))
    expression = next(p["valueString"] for p in rule["extension"] if p["url"] == "expression")
    value_set = RESOURCES["ValueSet/atrophic-scar-typical-sites"]
    sites = {c["code"] for include in value_set["compose"]["include"] for c in include["concept"]}
    assert set(re.findall(r"code='([a-z-]+)'", expression)) - {"hypotrophic"} == sites


# ------------------------------------------------------------------------------------------ activity definitions


def test_in_clinic_modalities_have_a_schedulable_rhythm() -> None:
    for ad in _of_type("ActivityDefinition"):
        if ad["kind"] == "ServiceRequest":
            repeat = ad["timingTiming"]["repeat"]
            assert repeat["count"] >= 1 and repeat["frequency"] >= 1 and repeat["period"] > 0
            assert repeat["periodUnit"] in {"d", "wk", "mo"}
            assert repeat.get("countMax", repeat["count"]) >= repeat["count"]
            assert [e for e in ad["extension"] if e["url"] == EXT + "minimum-interval"], ad["id"]
            assert ad["participant"] == [{"type": "practitioner"}]
            assert ad["code"]["coding"][0]["system"] == f"{BASE}/CodeSystem/scar-modality"
            assert ad.get("purpose") and ad.get("usage")
        elif ad["kind"] == "MedicationRequest":
            assert ad["participant"] == [{"type": "patient"}]
            assert "timingTiming" not in ad
            for dosage in ad["dosage"]:
                assert dosage["timing"]["repeat"]["periodUnit"] == "d"
            products = ([ad["productReference"]] if "productReference" in ad else []) + [
                e["valueReference"] for e in ad.get("extension", []) if e["url"] == EXT + "delivered-preparation"]
            assert products, ad["id"]


def test_therapeutic_dermabrasion_rhythm_is_the_source_rhythm() -> None:
    repeat = RESOURCES["ActivityDefinition/therapeutic-dermabrasion"]["timingTiming"]["repeat"]
    assert repeat == {"count": 10, "countMax": 15, "frequency": 2, "period": 1, "periodUnit": "wk"}


def test_every_modality_code_has_a_definition() -> None:
    used = {ad["code"]["coding"][0]["code"] for ad in _of_type("ActivityDefinition")}
    assert set(LOCAL_CODES[f"{BASE}/CodeSystem/scar-modality"]) <= used


def test_not_same_day_is_symmetric() -> None:
    pairs = set()
    for ad in _of_type("ActivityDefinition"):
        for extension in ad.get("extension", []):
            if extension["url"] == EXT + "not-same-day-as":
                other = _resolve(extension["valueCanonical"])
                assert other is not None and other["id"] != ad["id"]
                pairs.add((ad["id"], other["id"]))
    assert pairs and all((b, a) in pairs for a, b in pairs)


def _not_same_day(ad: dict) -> set[str]:
    return {_resolve(e["valueCanonical"])["id"] for e in ad.get("extension", []) if e["url"] == EXT + "not-same-day-as"}


PHORESIS = ("electrophoresis", "laserphoresis", "microcurrent-phoresis", "phonophoresis")


@pytest.mark.parametrize("first,others", [
    ("aha-peel", PHORESIS + ("mesotherapy", "therapeutic-dermabrasion", "erbium-laser-dermabrasion", "laser-therapy")),
    ("mesotherapy", PHORESIS),
])
def test_peels_and_mesotherapy_are_kept_apart_from_what_would_harm_fresh_skin(first: str, others: tuple) -> None:
    ad = RESOURCES[f"ActivityDefinition/{first}"]
    assert set(others) <= _not_same_day(ad)
    gaps = [e["valueDuration"]["value"] for e in ad["extension"] if e["url"] == EXT + "not-same-day-gap"]
    reasons = [e["valueString"] for e in ad["extension"] if e["url"] == EXT + "not-same-day-reason"]
    assert gaps and gaps[0] >= 2, "a rule keeps the procedures days apart, not only off one day"
    assert reasons and "clinic default" in reasons[0]


def test_every_kept_apart_rule_says_why() -> None:
    for ad in _of_type("ActivityDefinition"):
        urls = [e["url"] for e in ad.get("extension", [])]
        if EXT + "not-same-day-gap" in urls:
            assert EXT + "not-same-day-reason" in urls, ad["id"]


def test_optimal_atrophic_procedures_are_ranked_peels_first() -> None:
    plan = RESOURCES["PlanDefinition/atrophic-scar-protocol"]
    optimal = next(a for a in plan["action"] if a["id"] == "optimal-set")
    ranks = {a["id"]: e["valuePositiveInt"] for a in optimal["action"] for e in a.get("extension", [])
             if e["url"] == EXT + "scheduling-rank"}
    assert min(ranks, key=ranks.get) == "aha-peel"
    assert sorted(ranks.values()) == list(range(1, len(ranks) + 1))


# ------------------------------------------------------------------------------------------ medications


def test_medications_and_knowledge_agree() -> None:
    for medication in _of_type("Medication"):
        knowledge = RESOURCES[f"MedicationKnowledge/{medication['id']}"]
        assert knowledge["code"] == medication["code"]
        assert knowledge["ingredient"] == medication["ingredient"]
        assert knowledge["productType"], medication["id"]
        assert knowledge["administrationGuidelines"], medication["id"]
        for ingredient in medication["ingredient"]:
            codings = ingredient["itemCodeableConcept"]["coding"]
            assert codings[0]["system"] == f"{BASE}/CodeSystem/substance" and ingredient["itemCodeableConcept"]["text"]
            strength = ingredient.get("strength")
            if strength:
                assert strength["numerator"]["code"] == "%" and strength["denominator"]["value"] == 1


def test_every_class_used_by_screening_has_members() -> None:
    screening = RESOURCES["PlanDefinition/contraindication-screening"]
    classes = {(c["system"], c["code"]) for mk in _of_type("MedicationKnowledge") for t in mk["productType"]
               for c in t["coding"]}
    for action in screening["action"]:
        for coding in action["code"][0]["coding"]:
            if coding["system"] == f"{BASE}/CodeSystem/medication-class":
                assert (coding["system"], coding["code"]) in classes


# ------------------------------------------------------------------------------------------ plan definitions


def _expressions() -> list[tuple[str, str, str]]:
    found = []
    for pd in _of_type("PlanDefinition"):
        for action in _actions(pd.get("action", [])):
            for condition in action.get("condition", []):
                found.append((pd["id"], action["id"], condition["expression"]["expression"]))
            for dynamic in action.get("dynamicValue", []):
                found.append((pd["id"], action["id"], dynamic["expression"]["expression"]))
    return found


EXPRESSIONS = _expressions()


@pytest.mark.parametrize("plan,action,expression", EXPRESSIONS, ids=[f"{p}:{a}:{i}" for i, (p, a, _) in
                                                                      enumerate(EXPRESSIONS)])
def test_fhirpath_compiles_and_evaluates(plan: str, action: str, expression: str) -> None:
    assert expression.startswith("%resource.")
    compiled = fhirpathpy.compile(expression, R4)
    for name, qr in SAMPLES.items():
        result = compiled(qr, {"resource": qr})
        assert result in ([True], [False], []), f"{name}: {result}"


@pytest.mark.parametrize("pd", _of_type("PlanDefinition"), ids=lambda r: r["id"])
def test_plan_definition_structure(pd: dict[str, Any]) -> None:
    actions = list(_actions(pd["action"]))
    ids = [a["id"] for a in actions]
    assert len(ids) == len(set(ids)), "action ids must be unique"
    goals = {g["id"] for g in pd.get("goal", [])}
    for action in actions:
        assert set(action.get("goalId", [])) <= goals
        for related in action.get("relatedAction", []):
            assert related["actionId"] in ids
        for condition in action.get("condition", []):
            assert condition["kind"] == "applicability"
            assert condition["expression"]["language"] == "text/fhirpath"
        if pd["type"]["coding"][0]["code"] == "clinical-protocol" and not action.get("action"):
            assert action["definitionCanonical"].endswith(f"|{VERSION}"), action["id"]
        if action.get("action"):
            assert "definitionCanonical" not in action and action.get("selectionBehavior")
    if pd["type"]["coding"][0]["code"] == "clinical-protocol":
        for top in pd["action"]:
            assert top.get("condition"), f"{top['id']}: every top-level protocol action states its scar type"
        scar_types = [u["valueCodeableConcept"]["coding"][0]["code"] for u in pd["useContext"]
                      if u["code"]["code"] == "focus"]
        assert scar_types and pd["topic"][0]["coding"][0]["code"] == scar_types[0]


def _applicable_ids(pd_id: str, qr: dict[str, Any]) -> set[str]:
    found: set[str] = set()

    def visit(actions: list[dict[str, Any]]) -> None:
        for action in actions:
            if _applies(action, qr):
                found.add(action["id"])
                visit(action.get("action", []))

    visit(RESOURCES[f"PlanDefinition/{pd_id}"]["action"])
    return found


def test_atrophic_protocol_applies_to_atrophic_scars_only() -> None:
    old = _applicable_ids("atrophic-scar-protocol", SAMPLES["atrophic-old-no-vessels"])
    assert {"patient-warning", "course-old-scar", "optimal-set", "aha-peel", "home-care"} <= old
    assert "course-recent-scar" not in old
    recent = _applicable_ids("atrophic-scar-protocol", SAMPLES["atrophic-recent-vessels"])
    assert "course-recent-scar" in recent and "course-old-scar" not in recent and "patient-warning" not in recent
    assert _applicable_ids("atrophic-scar-protocol", SAMPLES["keloid"]) == set()
    assert _applicable_ids("atrophic-scar-protocol", SAMPLES["striae"]) == set()
    assert "course-striae" in _applicable_ids("striae-protocol", SAMPLES["striae"])
    assert "home-care" in _applicable_ids("hypotrophic-scar-protocol", SAMPLES["hypotrophic-breastfeeding"])


def test_exactly_one_course_applies_per_scar() -> None:
    for name, qr in SAMPLES.items():
        courses = [a for pd in _of_type("PlanDefinition") for a in _actions(pd["action"])
                   if any(c["coding"][0]["code"] == "treatment-course" for c in a.get("code", []))
                   and _applies(a, qr)]
        assert len(courses) == (0 if name == "keloid" else 1), name


def test_screening_rules_fire_on_the_assessment() -> None:
    screening = RESOURCES["PlanDefinition/contraindication-screening"]
    assert screening["type"]["coding"][0]["code"] == "eca-rule"
    fired = {name: {a["id"] for a in screening["action"] if _applies(a, qr)} for name, qr in SAMPLES.items()}
    assert fired["atrophic-pregnant-allergic"] >= {"retinoids-in-pregnancy", "allergy-to-ingredient",
                                                    "declined-modality", "no-remaining-preparation"}
    assert "retinoids-while-breastfeeding" in fired["hypotrophic-breastfeeding"]
    assert fired["atrophic-old-no-vessels"] == {"allergy-to-ingredient", "no-remaining-preparation"}
    for action in screening["action"]:
        assert action["reason"][0]["coding"][0]["code"] in LOCAL_CODES[f"{BASE}/CodeSystem/scar-care"]
        assert action["textEquivalent"] and action["documentation"]


# ------------------------------------------------------------------------------------------ traceability


def _traceability_tables() -> list[list[tuple[str, str, str, str]]]:
    tables, current = [], None
    for line in TRACEABILITY.read_text(encoding="utf-8").splitlines():
        if line.startswith("| # |"):
            assert line == "| # | Seed statement (paraphrased) | Resource | Element |"
            current = []
            tables.append(current)
            continue
        if current is not None and line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if set(cells[0]) <= {"-", " "}:
                continue
            assert len(cells) == 4, line
            current.append((cells[0], cells[1], cells[2], cells[3].strip("`")))
        elif current is not None and not line.strip():
            current = None
    return tables


TRACE_TABLES = _traceability_tables()
TRACE_ROWS = [(t, *row) for t, table in enumerate(TRACE_TABLES) for row in table]


def test_traceability_has_seed_and_default_tables() -> None:
    assert len(TRACE_TABLES) == 2
    seed, defaults = TRACE_TABLES
    assert len(seed) >= 150 and len(defaults) >= 20
    for table in TRACE_TABLES:
        assert [int(r[0]) for r in table] == list(range(1, len(table) + 1))


@pytest.mark.parametrize("table,number,statement,resource,element", TRACE_ROWS,
                         ids=[f"{'seed' if t == 0 else 'default'}-{n}" for t, n, *_ in TRACE_ROWS])
def test_traceability_row_resolves(table: int, number: str, statement: str, resource: str, element: str) -> None:
    assert statement and resource in RESOURCES, f"row {number}: {resource} is not a content file"
    rtype, rid = resource.split("/")
    data = _load(CONTENT / rtype / f"{rid}.json", decimals=True)
    result = fhirpathpy.evaluate(data, element, {}, R4)
    assert result and result != [False], f"row {number} ({statement}): {element} is empty on {resource}"


# ------------------------------------------------------------------------------------------ independent validator


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_valid_for_the_independent_r4_validator(path: Path, request: pytest.FixtureRequest) -> None:
    try:
        validator = request.getfixturevalue("r4_validator")
    except pytest.FixtureLookupError:
        pytest.skip("the tests.support.validator plugin is not active")
    assert validator.errors(_load(path)) == []
