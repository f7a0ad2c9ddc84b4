"""Terminology operations: ValueSet/$expand, CodeSystem/$lookup, ValueSet/$validate-code.

Built on a small hierarchical CodeSystem and ValueSets the module creates itself
(on SQLite and PostgreSQL); one end-to-end test runs over the shipped content when
it is present. Every answer is checked by the R4 validator.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.catalog.factories import (
    SHIPPED_CONTENT,
    TEST_BASE,
    catalog,
    code_system,
    create,
    outcome_expressions,
    value_set,
)
from tests.support.apps import FHIR_JSON
from tests.support.r4 import R4Validator

SYSTEM = f"{TEST_BASE}/CodeSystem/modality"
EXTERNAL = "https://external.invalid/CodeSystem/procedures"
VS = f"{TEST_BASE}/ValueSet"

CONCEPTS = [
    {"code": "physical", "display": "Physical therapy",
     "property": [{"code": "notSelectable", "valueBoolean": True}],
     "concept": [
         {"code": "cryo", "display": "Cryomassage", "definition": "Massage with liquid nitrogen.",
          "designation": [{"language": "de", "value": "Kryomassage"}]},
         {"code": "vacuum", "display": "Vacuum massage",
          "concept": [{"code": "vacuum-roller", "display": "Roller vacuum massage"}]},
     ]},
    {"code": "chemical", "display": "Chemical peel",
     "concept": [{"code": "aha", "display": "AHA peel"},
                 {"code": "tca", "display": "TCA peel", "property": [{"code": "status", "valueCode": "retired"}]}]},
    {"code": "meso", "display": "Mésothérapie"},
]
PROPERTIES = [{"code": "notSelectable", "type": "boolean"}, {"code": "status", "type": "code"}]


@pytest.fixture(scope="module")
def terminology(client: TestClient) -> dict[str, dict[str, Any]]:
    """The code system and value sets every test reads; created once per backend."""
    made = {"system": create(client, code_system(SYSTEM, CONCEPTS, property=PROPERTIES))}
    create(client, code_system(f"{TEST_BASE}/CodeSystem/not-present", [], content="not-present"))
    sets = {
        "all": {"include": [{"system": SYSTEM}]},
        "physical": {"include": [{"system": SYSTEM, "filter": [{"property": "concept", "op": "is-a",
                                                                "value": "physical"}]}]},
        "listed": {"include": [{"system": SYSTEM, "concept": [{"code": "aha", "display": "Alpha hydroxy acid peel"},
                                                             {"code": "cryo"}]},
                               {"system": EXTERNAL, "version": "2024",
                                "concept": [{"code": "X-1", "display": "External procedure"}]}]},
        "massages": {"include": [{"valueSet": [f"{VS}/all|1.0.0"]}],
                     "exclude": [{"system": SYSTEM, "concept": [{"code": "vacuum-roller"}]},
                                 {"system": SYSTEM, "filter": [{"property": "concept", "op": "is-a",
                                                                "value": "chemical"}]}]},
        "physical-and-listed": {"include": [{"valueSet": [f"{VS}/physical", f"{VS}/listed"]}]},
        "external-whole": {"include": [{"system": EXTERNAL}]},
        "unknown-import": {"include": [{"valueSet": [f"{VS}/nowhere"]}]},
        "cycle-a": {"include": [{"valueSet": [f"{VS}/cycle-b"]}]},
        "cycle-b": {"include": [{"valueSet": [f"{VS}/cycle-a"]}]},
        "bad-code": {"include": [{"system": SYSTEM, "concept": [{"code": "no-such-code"}]}]},
    }
    for name, compose in sets.items():
        made[name] = create(client, value_set(f"{VS}/{name}", compose))
    made["all-v2"] = create(client, value_set(f"{VS}/all", {"include": [{"system": SYSTEM, "concept": [
        {"code": "meso"}]}]}, version="2.0.0"))
    return made


def ok(response: Any, r4_validator: R4Validator) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    r4_validator.assert_valid(response.content)
    return response.json()  # type: ignore[no-any-return]


def failure(response: Any, status: int, r4_validator: R4Validator, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    r4_validator.assert_valid(body)
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["severity"] == "error"
    if code:
        assert body["issue"][0]["code"] == code, body
    return body  # type: ignore[no-any-return]


def expand(client: TestClient, r4_validator: R4Validator, **params: Any) -> dict[str, Any]:
    return ok(client.get("/fhir/ValueSet/$expand", params=params), r4_validator)


def codes(expanded: dict[str, Any]) -> list[str]:
    return [c["code"] for c in expanded["expansion"].get("contains", [])]


def parameters(*params: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(params)}


def values(result: dict[str, Any]) -> dict[str, Any]:
    """Output Parameters as name -> value (first of each name)."""
    found: dict[str, Any] = {}
    for p in result["parameter"]:
        value = next((v for k, v in p.items() if k.startswith("value")), p.get("part"))
        found.setdefault(p["name"], value)
    return found


def properties(result: dict[str, Any]) -> list[tuple[str, Any]]:
    pairs = []
    for p in result["parameter"]:
        if p["name"] == "property":
            parts = {q["name"]: next(v for k, v in q.items() if k.startswith("value")) for q in p["part"]}
            pairs.append((parts["code"], parts["value"]))
    return pairs


# ---------------------------------------------------------------------- $expand


def test_expand_by_url_lists_every_concept_of_a_whole_system_in_document_order(client, terminology, r4_validator):
    expanded = expand(client, r4_validator, url=f"{VS}/all", valueSetVersion="1.0.0")
    expansion = expanded["expansion"]
    assert expansion["identifier"].startswith("urn:uuid:") and expansion["timestamp"]
    assert expansion["total"] == 8
    assert codes(expanded) == ["physical", "cryo", "vacuum", "vacuum-roller", "chemical", "aha", "tca", "meso"]
    first = expansion["contains"][0]
    assert first == {"system": SYSTEM, "version": "1.0.0", "abstract": True, "code": "physical",
                     "display": "Physical therapy"}
    assert {"name": "used-codesystem", "valueUri": f"{SYSTEM}|1.0.0"} in expansion["parameter"]
    assert expanded["url"] == f"{VS}/all" and "meta" not in expanded


def test_expand_without_a_version_takes_the_newest_and_value_set_version_picks_one(client, terminology, r4_validator):
    assert codes(expand(client, r4_validator, url=f"{VS}/all")) == ["meso"]
    assert codes(expand(client, r4_validator, url=f"{VS}/all|2.0.0")) == ["meso"]
    assert len(codes(expand(client, r4_validator, url=f"{VS}/all", valueSetVersion="1.0.0"))) == 8


def test_expand_on_an_instance_is_the_same_expansion(client, terminology, r4_validator):
    by_id = ok(client.get(f"/fhir/ValueSet/{terminology['physical']['id']}/$expand"), r4_validator)
    by_url = expand(client, r4_validator, url=f"{VS}/physical")
    assert codes(by_id) == codes(by_url) == ["physical", "cryo", "vacuum", "vacuum-roller"]


@pytest.mark.parametrize(("text", "expected"), [
    ("massage", ["cryo", "vacuum", "vacuum-roller"]),
    ("MESOTHÉ", ["meso"]),
    ("mesotherapie", ["meso"]),
    ("roller massage", ["vacuum-roller"]),
    ("tca", ["tca"]),
    ("nothing like it", []),
])
def test_expand_filter_matches_display_and_code_ignoring_case_and_accents(
        client, terminology, r4_validator, text, expected):
    expanded = expand(client, r4_validator, url=f"{VS}/all", valueSetVersion="1.0.0", filter=text)
    assert codes(expanded) == expected
    assert expanded["expansion"]["total"] == len(expected)
    assert {"name": "filter", "valueString": text} in expanded["expansion"]["parameter"]


def test_expand_count_and_offset_page_through_the_expansion(client, terminology, r4_validator):
    pages = [expand(client, r4_validator, url=f"{VS}/all", valueSetVersion="1.0.0", count=3, offset=offset)
             for offset in (0, 3, 6)]
    assert [p["expansion"]["offset"] for p in pages] == [0, 3, 6]
    assert {p["expansion"]["total"] for p in pages} == {8}
    assert sum((codes(p) for p in pages), []) == codes(expand(client, r4_validator, url=f"{VS}/all|1.0.0"))
    assert {"name": "count", "valueInteger": 3} in pages[0]["expansion"]["parameter"]
    empty = expand(client, r4_validator, url=f"{VS}/all|1.0.0", count=0)
    assert empty["expansion"]["total"] == 8 and "contains" not in empty["expansion"]


def test_expand_active_only_drops_retired_concepts(client, terminology, r4_validator):
    everything = expand(client, r4_validator, url=f"{VS}/all|1.0.0")
    assert {"code": "tca", "inactive": True}.items() <= everything["expansion"]["contains"][6].items()
    assert "tca" not in codes(expand(client, r4_validator, url=f"{VS}/all|1.0.0", activeOnly="true"))


def test_expand_include_designations_adds_them(client, terminology, r4_validator):
    plain = expand(client, r4_validator, url=f"{VS}/physical")
    assert "designation" not in plain["expansion"]["contains"][1]
    rich = expand(client, r4_validator, url=f"{VS}/physical", includeDesignations="true")
    assert rich["expansion"]["contains"][1]["designation"] == [{"language": "de", "value": "Kryomassage"}]


def test_expand_concept_lists_keep_listed_displays_and_external_codes(client, terminology, r4_validator):
    contains = expand(client, r4_validator, url=f"{VS}/listed")["expansion"]["contains"]
    assert [(c["system"], c["code"], c.get("display")) for c in contains] == [
        (SYSTEM, "aha", "Alpha hydroxy acid peel"),
        (SYSTEM, "cryo", "Cryomassage"),
        (EXTERNAL, "X-1", "External procedure"),
    ]
    assert contains[2]["version"] == "2024"


def test_expand_imports_value_sets_and_applies_excludes(client, terminology, r4_validator):
    assert codes(expand(client, r4_validator, url=f"{VS}/massages")) == ["physical", "cryo", "vacuum", "meso"]


def test_expand_of_several_imported_value_sets_is_their_intersection(client, terminology, r4_validator):
    assert codes(expand(client, r4_validator, url=f"{VS}/physical-and-listed")) == ["cryo"]


def test_expand_by_post_with_a_parameters_body(client, terminology, r4_validator):
    body = parameters({"name": "url", "valueUri": f"{VS}/all"}, {"name": "valueSetVersion", "valueString": "1.0.0"},
                      {"name": "filter", "valueString": "peel"}, {"name": "count", "valueInteger": 2})
    expanded = ok(client.post("/fhir/ValueSet/$expand", json=body, headers=FHIR_JSON), r4_validator)
    assert codes(expanded) == ["chemical", "aha"] and expanded["expansion"]["total"] == 3


def test_expand_of_an_inline_value_set_posted_as_a_parameter(client, terminology, r4_validator):
    inline = value_set("https://test.cicatrix.invalid/ValueSet/inline",
                       {"include": [{"system": SYSTEM, "concept": [{"code": "meso"}]}]})
    body = parameters({"name": "valueSet", "resource": inline})
    expanded = ok(client.post("/fhir/ValueSet/$expand", json=body, headers=FHIR_JSON), r4_validator)
    assert expanded["expansion"]["contains"][0]["display"] == "Mésothérapie"
    assert client.get("/fhir/ValueSet", params={"url": inline["url"], "_summary": "count"}).json()["total"] == 0


def expand_inline(client: TestClient, compose: dict[str, Any]) -> Any:
    inline = value_set("https://test.cicatrix.invalid/ValueSet/inline", compose)
    return client.post("/fhir/ValueSet/$expand", json=parameters({"name": "valueSet", "resource": inline}),
                       headers=FHIR_JSON)


@pytest.mark.parametrize(("rule", "expected"), [
    (("concept", "descendent-of", "physical"), ["cryo", "vacuum", "vacuum-roller"]),
    (("concept", "is-not-a", "physical"), ["chemical", "aha", "tca", "meso"]),
    (("concept", "generalizes", "vacuum-roller"), ["physical", "vacuum", "vacuum-roller"]),
    (("concept", "in", "aha,meso"), ["aha", "meso"]),
    (("concept", "not-in", "aha,meso,physical,chemical"), ["cryo", "vacuum", "vacuum-roller", "tca"]),
    (("code", "regex", "vac.*"), ["vacuum", "vacuum-roller"]),
    (("status", "=", "retired"), ["tca"]),
    (("notSelectable", "exists", "true"), ["physical"]),
])
def test_expand_compose_filters_select_codes_in_document_order(client, terminology, r4_validator, rule, expected):
    prop, op, value = rule
    compose = {"include": [{"system": SYSTEM, "filter": [{"property": prop, "op": op, "value": value}]}]}
    assert codes(ok(expand_inline(client, compose), r4_validator)) == expected


def test_expand_with_a_filter_the_catalog_cannot_evaluate_is_422(client, terminology, r4_validator):
    compose = {"include": [{"system": SYSTEM, "filter": [{"property": "status", "op": "is-a", "value": "x"}]}]}
    body = failure(expand_inline(client, compose), 422, r4_validator, "not-supported")
    assert outcome_expressions(body) == ["ValueSet.compose.include[0].filter[0].op"]
    external = {"include": [{"system": EXTERNAL, "filter": [{"property": "concept", "op": "is-a", "value": "x"}]}]}
    failure(expand_inline(client, external), 422, r4_validator, "not-supported")


def test_expand_of_a_whole_system_the_catalog_does_not_hold_is_422(client, terminology, r4_validator):
    body = failure(client.get("/fhir/ValueSet/$expand", params={"url": f"{VS}/external-whole"}), 422, r4_validator,
                   "not-supported")
    assert EXTERNAL in body["issue"][0]["diagnostics"]
    assert outcome_expressions(body) == ["ValueSet.compose.include[0].system"]


def test_expand_of_a_system_that_does_not_list_its_codes_is_422(client, terminology, r4_validator):
    inline = value_set("https://test.cicatrix.invalid/ValueSet/np",
                       {"include": [{"system": f"{TEST_BASE}/CodeSystem/not-present"}]})
    response = client.post("/fhir/ValueSet/$expand", json=parameters({"name": "valueSet", "resource": inline}),
                           headers=FHIR_JSON)
    failure(response, 422, r4_validator, "not-supported")


@pytest.mark.parametrize(("name", "code"), [("unknown-import", "not-found"), ("cycle-a", "processing"),
                                            ("bad-code", "code-invalid")])
def test_expand_of_a_broken_definition_is_422(client, terminology, r4_validator, name, code):
    failure(client.get("/fhir/ValueSet/$expand", params={"url": f"{VS}/{name}"}), 422, r4_validator, code)


def test_expand_of_a_value_set_the_catalog_does_not_hold_is_404(client, terminology, r4_validator):
    failure(client.get("/fhir/ValueSet/$expand", params={"url": f"{VS}/missing"}), 404, r4_validator, "not-found")
    failure(client.get("/fhir/ValueSet/missing-id/$expand"), 404, r4_validator, "not-found")


def test_expand_without_a_value_set_is_400(client, r4_validator):
    failure(client.get("/fhir/ValueSet/$expand"), 400, r4_validator, "required")


@pytest.mark.parametrize(("params", "expression"), [
    ({"url": f"{VS}/all", "count": "ten"}, "count"),
    ({"url": f"{VS}/all", "offset": "-1"}, "offset"),
    ({"url": f"{VS}/all", "colour": "blue"}, "colour"),
])
def test_expand_with_a_bad_query_parameter_is_400_naming_it(client, terminology, r4_validator, params, expression):
    body = failure(client.get("/fhir/ValueSet/$expand", params=params), 400, r4_validator)
    assert outcome_expressions(body) == [expression]


@pytest.mark.parametrize(("body", "expression"), [
    (parameters({"name": "url", "valueUri": f"{VS}/all", "valueString": "two values"}), "Parameters.parameter[0]"),
    (parameters({"name": "count", "valueString": "3"}), "Parameters.parameter[0]"),
    (parameters({"name": "url", "valueUri": f"{VS}/all"}, {"name": "url", "valueUri": f"{VS}/all"}),
     "Parameters.parameter[1]"),
    (parameters({"name": "colour", "valueString": "blue"}), "Parameters.parameter[0].name"),
    (parameters({"valueString": "no name"}), "Parameters.parameter[0].name"),
    ({"resourceType": "ValueSet", "status": "active"}, "resourceType"),
])
def test_a_malformed_parameters_body_is_400_with_an_expression(client, terminology, r4_validator, body, expression):
    response = client.post("/fhir/ValueSet/$expand", json=body, headers=FHIR_JSON)
    assert expression in outcome_expressions(failure(response, 400, r4_validator))


# ---------------------------------------------------------------------- $lookup


def test_lookup_returns_name_version_display_designations_and_properties(client, terminology, r4_validator):
    result = ok(client.get("/fhir/CodeSystem/$lookup", params={"system": SYSTEM, "code": "cryo"}), r4_validator)
    found = values(result)
    assert found["name"] == terminology["system"]["name"] and found["version"] == "1.0.0"
    assert found["display"] == "Cryomassage"
    assert found["designation"] == [{"name": "language", "valueCode": "de"},
                                    {"name": "value", "valueString": "Kryomassage"}]
    assert properties(result) == [("parent", "physical"), ("definition", "Massage with liquid nitrogen.")]


def test_lookup_lists_children_and_the_concept_properties(client, terminology, r4_validator):
    result = ok(client.get("/fhir/CodeSystem/$lookup", params={"system": SYSTEM, "code": "physical"}), r4_validator)
    assert properties(result) == [("child", "cryo"), ("child", "vacuum"), ("notSelectable", True)]
    grandchild = ok(client.get("/fhir/CodeSystem/$lookup", params={"system": SYSTEM, "code": "vacuum-roller"}),
                    r4_validator)
    assert properties(grandchild) == [("parent", "vacuum")]


def test_lookup_property_parameter_selects_what_is_returned(client, terminology, r4_validator):
    result = ok(client.get("/fhir/CodeSystem/$lookup", params=[("system", SYSTEM), ("code", "vacuum"),
                                                                 ("property", "child")]), r4_validator)
    assert properties(result) == [("child", "vacuum-roller")]


def test_lookup_by_coding_posted_in_parameters(client, terminology, r4_validator):
    body = parameters({"name": "coding", "valueCoding": {"system": SYSTEM, "code": "meso"}})
    result = ok(client.post("/fhir/CodeSystem/$lookup", json=body, headers=FHIR_JSON), r4_validator)
    assert values(result)["display"] == "Mésothérapie"
    by_get = ok(client.get("/fhir/CodeSystem/$lookup", params={"coding": f"{SYSTEM}|meso"}), r4_validator)
    assert by_get == result


def test_lookup_of_an_unknown_code_is_404_not_found(client, terminology, r4_validator):
    body = failure(client.get("/fhir/CodeSystem/$lookup", params={"system": SYSTEM, "code": "nope"}), 404,
                   r4_validator, "not-found")
    assert "nope" in body["issue"][0]["diagnostics"] and outcome_expressions(body) == ["code"]


def test_lookup_in_a_system_the_catalog_does_not_hold_is_404(client, terminology, r4_validator):
    response = client.get("/fhir/CodeSystem/$lookup", params={"system": EXTERNAL, "code": "X-1"})
    assert outcome_expressions(failure(response, 404, r4_validator, "not-found")) == ["system"]
    response = client.get("/fhir/CodeSystem/$lookup", params={"system": SYSTEM, "code": "cryo", "version": "9"})
    failure(response, 404, r4_validator, "not-found")


def test_lookup_without_a_system_is_400(client, r4_validator):
    response = client.get("/fhir/CodeSystem/$lookup", params={"code": "cryo"})
    assert outcome_expressions(failure(response, 400, r4_validator, "required")) == ["system"]


# ---------------------------------------------------------------------- $validate-code


def validate(client: TestClient, r4_validator: R4Validator, **params: Any) -> dict[str, Any]:
    return values(ok(client.get("/fhir/ValueSet/$validate-code", params=params), r4_validator))


def test_validate_code_accepts_a_member_and_returns_its_display(client, terminology, r4_validator):
    found = validate(client, r4_validator, url=f"{VS}/physical", system=SYSTEM, code="vacuum-roller")
    assert found == {"result": True, "display": "Roller vacuum massage"}


def test_validate_code_accepts_a_display_matching_a_designation_ignoring_case(client, terminology, r4_validator):
    found = validate(client, r4_validator, url=f"{VS}/physical", system=SYSTEM, code="cryo", display="KRYOMASSAGE")
    assert found["result"] is True


def test_validate_code_rejects_a_code_outside_the_value_set(client, terminology, r4_validator):
    found = validate(client, r4_validator, url=f"{VS}/physical", system=SYSTEM, code="aha")
    assert found["result"] is False and "not in ValueSet" in found["message"]


def test_validate_code_rejects_an_unknown_code_of_a_held_system(client, terminology, r4_validator):
    found = validate(client, r4_validator, url=f"{VS}/all", valueSetVersion="1.0.0", system=SYSTEM, code="zzz")
    assert found["result"] is False and "Unknown code 'zzz'" in found["message"]


def test_validate_code_rejects_a_wrong_display_and_says_the_right_one(client, terminology, r4_validator):
    found = validate(client, r4_validator, url=f"{VS}/physical", system=SYSTEM, code="cryo", display="Laser")
    assert found["result"] is False and "'Cryomassage'" in found["message"]
    assert found["display"] == "Cryomassage"


def test_validate_code_on_an_instance_with_a_bare_code(client, terminology, r4_validator):
    response = client.get(f"/fhir/ValueSet/{terminology['listed']['id']}/$validate-code", params={"code": "X-1"})
    assert values(ok(response, r4_validator)) == {"result": True, "display": "External procedure"}


def test_validate_code_with_a_codeable_concept_is_valid_when_one_coding_is(client, terminology, r4_validator):
    concept = {"coding": [{"system": EXTERNAL, "code": "unknown"}, {"system": SYSTEM, "code": "aha"}]}
    body = parameters({"name": "url", "valueUri": f"{VS}/listed"}, {"name": "codeableConcept",
                                                                      "valueCodeableConcept": concept})
    result = values(ok(client.post("/fhir/ValueSet/$validate-code", json=body, headers=FHIR_JSON), r4_validator))
    assert result == {"result": True, "display": "Alpha hydroxy acid peel"}


def test_validate_code_with_a_coding(client, terminology, r4_validator):
    body = parameters({"name": "url", "valueUri": f"{VS}/massages"},
                      {"name": "coding", "valueCoding": {"system": SYSTEM, "code": "aha"}})
    result = values(ok(client.post("/fhir/ValueSet/$validate-code", json=body, headers=FHIR_JSON), r4_validator))
    assert result["result"] is False


def test_validate_code_without_a_code_is_400(client, terminology, r4_validator):
    failure(client.get("/fhir/ValueSet/$validate-code", params={"url": f"{VS}/all"}), 400, r4_validator, "required")


def test_validate_code_against_an_unexpandable_value_set_is_422(client, terminology, r4_validator):
    response = client.get("/fhir/ValueSet/$validate-code",
                          params={"url": f"{VS}/external-whole", "system": EXTERNAL, "code": "X-1"})
    failure(response, 422, r4_validator, "not-supported")


# ---------------------------------------------------------------------- capability


def test_capability_statement_lists_the_terminology_operations(client, r4_validator):
    statement = ok(client.get("/fhir/metadata"), r4_validator)
    operations = {(r["type"], op["name"]) for r in statement["rest"][0]["resource"] for op in r.get("operation", [])}
    assert {("ValueSet", "expand"), ("ValueSet", "validate-code"), ("CodeSystem", "lookup")} <= operations


# ---------------------------------------------------------------------- shipped content


@pytest.mark.skipif(not SHIPPED_CONTENT, reason="no shipped content yet")
def test_every_shipped_value_set_expands_and_each_of_its_codes_validates_and_looks_up(
        module_database_url: str, r4_validator: R4Validator):
    """End to end over the real terminology (the R4 validator sees one answer of each kind per value set)."""
    with catalog(module_database_url, r4_validator, content=True) as shipped:  # beside the module's own terminology
        bundle = ok(shipped.get("/fhir/ValueSet", params={"_count": "1000", "_elements": "url,version"}),
                    r4_validator)
        shipped_sets = [e["resource"] for e in bundle["entry"]
                        if e["resource"]["url"].startswith("https://fhir.cicatrix.org/")]
        assert shipped_sets, "the shipped content has no ValueSet"
        looked_up: set[tuple[str, str]] = set()
        for vs in shipped_sets:
            expanded = ok(shipped.get(f"/fhir/ValueSet/{vs['id']}/$expand"), r4_validator)
            assert expanded["expansion"]["total"] > 0, vs["url"]
            canonical = f"{vs['url']}|{vs['version']}" if vs.get("version") else vs["url"]
            for i, concept in enumerate(expanded["expansion"]["contains"]):
                response = shipped.get("/fhir/ValueSet/$validate-code",
                                       params={"url": canonical, "system": concept["system"], "code": concept["code"],
                                               "display": concept.get("display") or concept["code"]})
                if i == 0:
                    r4_validator.assert_valid(response.content)
                assert values(response.json())["result"] is True, (vs["url"], concept, response.text)
                key = (concept["system"], concept["code"])
                if concept["system"].startswith("https://fhir.cicatrix.org/") and key not in looked_up:
                    looked_up.add(key)
                    lookup = shipped.get("/fhir/CodeSystem/$lookup", params={"system": key[0], "code": key[1]})
                    assert lookup.status_code == 200, lookup.text
                    assert values(lookup.json())["display"]
