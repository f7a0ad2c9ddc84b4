"""The required-binding check (tools/fhir-validator/bindings.js) on its own.

Why: it is our own code, not a library, so its walk (nesting, choice types, contained and bundled
resources, primitive extensions) and its value-set semantics are pinned down here.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.validator.helpers import example

SUBJECT = {"reference": "Patient/p1"}


@pytest.fixture
def binding_errors(by_check):
    return lambda resource: by_check(resource)["bindings"]


# -- where the walk goes ------------------------------------------------------------------------------


def test_contained_resource(binding_errors) -> None:
    group = example("RequestGroup/rg1")
    group["contained"][0]["status"] = "planned"
    assert binding_errors(group) == [
        "[bindings] RequestGroup.contained[0].status: 'planned' is not in required value set RequestStatus "
        "(http://hl7.org/fhir/ValueSet/request-status)"
    ]


def test_bundle_entry_resource_and_bundle_itself(binding_errors) -> None:
    bundle = example("Bundle/transaction")
    bundle["entry"][1]["resource"]["intent"] = "orders"
    bundle["entry"][2]["request"]["method"] = "UPSERT"
    found = binding_errors(bundle)
    assert len(found) == 2, found
    assert found[0].startswith("[bindings] Bundle.entry[1].resource.intent: 'orders'")
    assert found[1].startswith("[bindings] Bundle.entry[2].request.method: 'UPSERT'")


def test_resource_nested_in_parameters_and_bundle(binding_errors) -> None:
    parameters = example("Parameters/parameters")
    parameters["parameter"][3]["resource"]["entry"][0]["resource"]["status"] = "done"
    found = binding_errors(parameters)
    assert len(found) == 1 and "Parameters.parameter[3].resource.entry[0].resource.status: 'done'" in found[0]


def test_choice_type_and_datatype(binding_errors) -> None:
    """ServiceRequest.occurrence[x] as Timing; Timing.repeat.periodUnit is bound to units-of-time."""
    request = example("ServiceRequest/sr-derm")
    request["occurrenceTiming"] = {"repeat": {"frequency": 2, "period": 1, "periodUnit": "week"}}
    assert binding_errors(request) == [
        "[bindings] ServiceRequest.occurrenceTiming.repeat.periodUnit: 'week' is not in required value set "
        "UnitsOfTime (http://hl7.org/fhir/ValueSet/units-of-time)"
    ]


def test_extension_value_and_primitive_extension(binding_errors) -> None:
    plan = example("CarePlan/cp1")
    bad_timing = {"url": "https://example.org/ext", "valueTiming": {"repeat": {"durationUnit": "hour"}}}
    plan["extension"] = [bad_timing]
    plan["_status"] = {"extension": [bad_timing]}
    assert [e.split(":")[0] for e in binding_errors(plan)] == [
        "[bindings] CarePlan.extension[0].valueTiming.repeat.durationUnit",
        "[bindings] CarePlan.status.extension[0].valueTiming.repeat.durationUnit",
    ]


def test_recursive_content_reference(binding_errors) -> None:
    """Questionnaire.item.item is a contentReference to Questionnaire.item."""
    questionnaire = example("Questionnaire/scar-assessment")
    questionnaire["item"][1]["item"] = [{"linkId": "depth", "text": "Depth", "type": "number"}]
    questionnaire["item"][1]["type"] = "group"
    found = binding_errors(questionnaire)
    assert len(found) == 1 and found[0].startswith("[bindings] Questionnaire.item[1].item[0].type: 'number'")


# -- value-set semantics ------------------------------------------------------------------------------


def test_nested_code_of_hierarchical_system_is_valid(binding_errors) -> None:
    """issue-type is hierarchical: `required` sits under `invalid` and is a valid code."""
    outcome = example("OperationOutcome/operationoutcome")
    outcome["issue"][0]["code"] = "required"
    assert binding_errors(outcome) == []
    outcome["issue"][0]["code"] = "missing"
    assert len(binding_errors(outcome)) == 1


def test_concept_list_value_set_excludes_other_codes_of_its_system(binding_errors) -> None:
    """care-plan-intent lists four request-intent codes; `original-order` is request-intent but not listed."""
    plan = example("CarePlan/cp1")
    plan["intent"] = "original-order"
    assert len(binding_errors(plan)) == 1
    plan["intent"] = "option"
    assert binding_errors(plan) == []


def test_abstract_code_is_rejected(binding_errors) -> None:
    """item-type `question` is notSelectable (abstract) in R4: not a value an instance may carry."""
    questionnaire = example("Questionnaire/scar-assessment")
    questionnaire["item"][1]["type"] = "question"
    assert len(binding_errors(questionnaire)) == 1


def _condition(**status: Any) -> dict[str, Any]:
    return {"resourceType": "Condition", "subject": SUBJECT, **status}


CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
SNOMED = "http://snomed.info/sct"


@pytest.mark.parametrize(
    ("clinical_status", "valid"),
    [
        ({"coding": [{"system": CLINICAL, "code": "active"}]}, True),
        ({"coding": [{"system": SNOMED, "code": "55561003"}, {"system": CLINICAL, "code": "active"}]}, True),
        ({"coding": [{"system": CLINICAL, "code": "x"}, {"system": CLINICAL, "code": "remission"}]}, True),
        ({"coding": [{"system": CLINICAL, "code": "bogus"}]}, False),
        ({"coding": [{"code": "active"}]}, False),  # a Coding needs its system to be in the value set
        ({"coding": [{"system": SNOMED, "code": "active"}]}, False),
        ({"text": "active"}, False),  # text alone is no concept from a required value set
    ],
)
def test_codeable_concept_needs_one_coding_from_the_value_set(binding_errors, clinical_status, valid) -> None:
    found = binding_errors(_condition(clinicalStatus=clinical_status))
    assert (found == []) is valid, found


def test_media_types_are_checked_by_grammar(binding_errors) -> None:
    statement = example("CapabilityStatement/capabilitystatement")
    statement["format"] = ["json", "application/fhir+json", "application/fhir+json; fhirVersion=4.0"]
    statement["patchFormat"] = ["application/json-patch+json"]
    assert binding_errors(statement) == []
    statement["format"] = ["fhir json"]
    statement["patchFormat"] = ["json"]  # the xml/json/ttl shorthand is allowed for format only
    assert len(binding_errors(statement)) == 2


def test_unexpandable_value_set_is_reported_not_passed(binding_errors) -> None:
    """ucum-units includes all of UCUM, which is not shipped: the check says it cannot decide."""
    definition = {
        "resourceType": "ResearchElementDefinition",
        "status": "draft",
        "characteristic": [
            {
                "definitionCodeableConcept": {"text": "scar depth"},
                "unitOfMeasure": {"coding": [{"system": "http://unitsofmeasure.org", "code": "mm"}]},
            }
        ],
    }
    found = binding_errors(definition)
    assert len(found) == 1 and "cannot be checked" in found[0] and "ucum-units" in found[0]
