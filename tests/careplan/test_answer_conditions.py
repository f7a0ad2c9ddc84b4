"""Protocol conditions and plausibility constraints remembered by the answers and variables they read
(services/careplan/answer_conditions.py): which expressions qualify, and that a remembered result is always
the one fhirpathpy gives for that assessment."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import fhirpathpy
import pytest
from fhirpathpy.models import models as fhirpath_models
from hypothesis import given, settings
from hypothesis import strategies as st

from services.careplan.answer_conditions import ConditionResults, Reads, reads
from services.careplan.knowledge import ExpressionCache
from services.careplan.plausibility import constraints
from services.catalog.settings import CONTENT_DIR
from tests.careplan.conftest import assessment_of, example

EXAMPLES_DIR = CONTENT_DIR.parents[2] / "contracts" / "fhir" / "examples"

CONDITIONS = sorted({e for path in CONTENT_DIR.rglob("*.json")
                     for e in re.findall(r'"expression": "(%resource[^"]*)"', path.read_text())})
EXAMPLES = sorted(p.name.removesuffix(".parameters.json") for p in EXAMPLES_DIR.glob("*.parameters.json"))
PLAUSIBILITY = sorted({c.expression for path in CONTENT_DIR.rglob("*.json") if '"Questionnaire"' in path.read_text()
                       for c in constraints(json.loads(path.read_text()))})
AGES: list[Any] = [[], 0, 6, 30, 240]
"""Values of %patientAgeMonths: none known, and ages below and above the example scars' ages."""


@pytest.mark.parametrize(("expression", "link_ids", "variables"), [
    ("%resource.item.where(linkId='pregnant').answer.value = true", {"pregnant"}, set()),
    ("%context.item.where(linkId = 'a').answer.item.where(linkId='n').answer.value = 2", {"a"}, set()),
    ("%resource.item.where(linkId='a').answer.value.where($this = %resource.item.where(linkId='b').answer.value)",
     {"a", "b"}, set()),
    ("item.where(linkId='a').answer", {"a"}, set()),  # from the assessment as context
    ("%age.empty() or item.where(linkId='a').answer.value.all($this <= %age)", {"a"}, {"age"}),
])
def test_expressions_that_read_only_answers_name_the_items_and_variables_they_read(expression, link_ids, variables):
    assert reads(expression) == Reads(frozenset(link_ids), frozenset(variables))


@pytest.mark.parametrize("expression", [
    "item.exists() and item.where(linkId='a').exists()",  # every item of the context resource
    "status = 'completed' and item.where(linkId='a').exists()",  # another path from the context resource
    "%resource.status = 'completed' and %resource.item.where(linkId='a').exists()",  # another element
    "%resource.item.where(linkId='a').answer.value > today()",  # the date of evaluation
    "%resource.item.where(linkId='a' or true).answer",  # not a plain linkId match
    "%resource.item.where(linkId='a').answer.value.resolve()",  # data outside the assessment
    "%resource.exists() and %resource.item.where(linkId='a').exists()",  # the whole assessment
    "$this.item.where(linkId='a').exists()",
    "%resource.item.exists()",  # every item
    "not a FHIRPath expression (",
])
def test_expressions_that_may_read_anything_else_are_not_remembered(expression):
    assert reads(expression) is None


def test_every_shipped_condition_and_constraint_is_remembered_by_what_it_reads():
    assert CONDITIONS and all(reads(e) for e in CONDITIONS)
    assert PLAUSIBILITY and all(reads(e) for e in PLAUSIBILITY)


def direct(expression: str, response: dict[str, Any], **more: Any) -> list[Any]:
    variables = {"resource": response, "context": response, **more}
    return fhirpathpy.compile(expression, model=fhirpath_models["r4"])(response, variables)


def test_remembered_results_are_what_fhirpath_gives_each_assessment():
    cache = ExpressionCache()
    responses = [assessment_of(example(name)) for name in EXAMPLES]
    for _ in range(2):  # the second pass is answered from memory
        for response in responses:
            for expression in CONDITIONS:
                variables = {"resource": response, "context": response}
                assert cache.evaluate(expression, response, variables) == direct(expression, response), expression
            for expression in PLAUSIBILITY:
                for age in AGES:
                    variables = {"resource": response, "context": response, "patientAgeMonths": age}
                    assert cache.evaluate(expression, response, variables) == \
                        direct(expression, response, patientAgeMonths=age), (expression, age)


def test_an_answer_the_condition_does_not_read_does_not_change_its_key():
    cache = ExpressionCache()
    response = assessment_of(example("atrophic-pregnant"))
    other = copy.deepcopy(response)
    other["id"], other["subject"] = "someone-else", {"reference": "Patient/other"}
    for item in other["item"]:
        if item["linkId"] == "body-site":
            item["answer"][0]["valueCoding"]["code"] = "changed"
    expression = "%resource.item.where(linkId='pregnant').answer.value = true"
    key = cache.results.key(expression, response, {"resource": response, "context": response})
    assert key == cache.results.key(expression, other, {"resource": other, "context": other})
    for item in other["item"]:
        if item["linkId"] == "pregnant":
            item["answer"] = [{"valueBoolean": False}]
    assert key != cache.results.key(expression, other, {"resource": other, "context": other})


def test_a_variable_read_is_part_of_the_key_and_nothing_is_remembered_without_it_or_for_another_resource():
    results = ExpressionCache().results
    response = assessment_of(example("atrophic-pregnant"))
    answers = {"resource": response, "context": response}
    assert results.key(CONDITIONS[0], response, answers | {"x": 1}) == results.key(CONDITIONS[0], response, answers), \
        "a variable the expression does not read does not matter"
    assert results.key(CONDITIONS[0], response, {"resource": copy.deepcopy(response)}) is None
    expression = "%age.empty() or %resource.item.where(linkId='scar-age-months').answer.value.all($this <= %age)"
    keys = {results.key(expression, response, answers | {"age": age}) for age in AGES}
    assert None not in keys and len(keys) == len(AGES)
    assert results.key(expression, response, answers) is None, "a variable read but not given"
    assert results.key(expression, response, answers | {"age": object()}) is None, "a value that is not plain data"


ANSWERS = st.fixed_dictionaries({
    "scar-type": st.sampled_from(["atrophic", "hypotrophic", "striae", "keloid"]),
    "scar-age-months": st.integers(min_value=0, max_value=120),
    "vessels-visible": st.booleans(), "pregnant": st.booleans(), "breastfeeding": st.booleans(),
    "age": st.one_of(st.just([]), st.integers(min_value=0, max_value=1300)),
})


@settings(max_examples=60, deadline=None)
@given(answers=st.lists(ANSWERS, min_size=1, max_size=8))
def test_over_varied_assessments_memory_never_changes_a_result(answers):
    cache = ExpressionCache(results=ConditionResults(max_bytes=16 * 1024))  # small, so that entries are also evicted
    template = assessment_of(example("atrophic-chest-visible-vessels"))
    for given_answers in answers:
        response = json.loads(json.dumps(template))
        for item in response["item"]:
            value = given_answers.get(item["linkId"])
            if item["linkId"] == "scar-type":
                item["answer"][0]["valueCoding"]["code"] = value
            elif isinstance(value, bool):
                item["answer"] = [{"valueBoolean": value}]
            elif isinstance(value, int):
                item["answer"] = [{"valueInteger": value}]
        for expression in CONDITIONS:
            variables = {"resource": response, "context": response}
            assert cache.evaluate(expression, response, variables) == direct(expression, response), expression
        for expression in PLAUSIBILITY:
            variables = {"resource": response, "context": response, "patientAgeMonths": given_answers["age"]}
            assert cache.evaluate(expression, response, variables) == \
                direct(expression, response, patientAgeMonths=given_answers["age"]), expression


def test_padded_items_are_not_remembered_and_memory_stays_within_its_bytes():
    results = ConditionResults(max_bytes=64 * 1024)
    cache = ExpressionCache(results=results)
    expression = "%resource.item.where(linkId='pregnant').answer.value = true"
    for i in range(500):
        response = assessment_of(example("atrophic-pregnant"))
        for item in response["item"]:
            item["text"] = f"{i}" + ("x" * 20_000 if i % 2 else "")
        variables = {"resource": response, "context": response}
        assert cache.evaluate(expression, response, variables) == direct(expression, response)
        assert (results.key(expression, response, variables) is None) == bool(i % 2)
    assert 0 < results.cache.size <= 64 * 1024
    assert len(results.cache) < 500, "the least recently used results were dropped"
