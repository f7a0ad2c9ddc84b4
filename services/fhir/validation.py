"""Write-time validation of incoming resources against R4.

The R4B models check structure, cardinality, primitive formats and choice types,
but accept any string for a `code` with a required binding and accept elements that
exist only in R4B. This module adds both checks so that what a service stores is
what an R4 server would accept. Every problem becomes one OperationOutcome issue
with a FHIRPath `expression`, and all of them are reported at once.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from pydantic import ValidationError

from services.fhir.outcome import BadRequest, Issue, validation_issues

R4B_ONLY_ELEMENTS = frozenset({"subjectCanonical"})
R4B_ONLY_TYPES = frozenset({"Ingredient", "ClinicalUseDefinition", "AdministrableProductDefinition",
                            "ManufacturedItemDefinition", "PackagedProductDefinition",
                            "MedicinalProductDefinition", "RegulatedAuthorization", "SubscriptionStatus",
                            "SubscriptionTopic", "NutritionProduct", "Citation", "Evidence", "EvidenceReport",
                            "EvidenceVariable"})


# Required R4 bindings the R4B models do not enumerate (or enumerate only in part): checked here so the catalog
# never stores, say, an ActivityDefinition of kind "Procedure" (FHIR-REFERENCE §1.2).
R4_REQUIRED_CODES: dict[str, frozenset[str]] = {
    "ActivityDefinition.kind": frozenset({
        "Appointment", "AppointmentResponse", "CarePlan", "Claim", "CommunicationRequest", "Contract",
        "DeviceRequest", "EnrollmentRequest", "ImmunizationRecommendation", "MedicationRequest", "NutritionOrder",
        "ServiceRequest", "SupplyRequest", "Task", "VisionPrescription"}),
    "QuestionnaireItem.type": frozenset({
        "group", "display", "boolean", "decimal", "integer", "date", "dateTime", "time", "string", "text", "url",
        "choice", "open-choice", "attachment", "reference", "quantity"}),
}


def model_class(resource_type: str) -> type[FHIRAbstractModel]:
    if resource_type in R4B_ONLY_TYPES:
        raise KeyError(resource_type)
    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError, AttributeError):
        raise KeyError(resource_type) from None


def r4_issues(resource: dict[str, Any]) -> list[Issue]:
    """Every reason `resource` is not valid R4 (empty when it is)."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return [Issue(code="structure", diagnostics="resourceType is missing", expression=("resourceType",))]
    try:
        cls = model_class(resource_type)
    except KeyError:
        return [Issue(code="not-supported", diagnostics=f"'{resource_type}' is not an R4 resource type",
                      expression=("resourceType",))]
    issues = [Issue(code="structure", diagnostics=f"{path}: '{key}' is not an R4 element (it exists only in R4B)",
                    expression=(path,)) for path, key in _r4b_only(resource, resource_type)]
    issues += [Issue(code="structure", expression=(path,),
                     diagnostics=f"{path}: FHIR JSON has no empty arrays, empty objects or nulls; leave it out")
               for path in _empty(resource, resource_type)]
    try:
        model = cls.model_validate(resource)
    except ValidationError as exc:
        return issues + validation_issues(exc.errors(include_url=False), prefix=resource_type)
    except (TypeError, KeyError, AttributeError):
        # fhir_core assumes a nested resource's resourceType is a string; anything else is malformed input
        # (found by tests/security fuzzing), not a server error
        return issues + [Issue(code="structure", expression=(resource_type,),
                               diagnostics=f"{resource_type}: a contained or nested resource is malformed "
                                           "(its resourceType must be a resource type name)")]
    return issues + list(_binding_issues(model, resource_type))


def check_r4(resource: dict[str, Any]) -> None:
    """400 with every reason `resource` is not valid R4."""
    issues = r4_issues(resource)
    if issues:
        raise BadRequest(issues[0].diagnostics, issues=issues)


def parse(resource: dict[str, Any]) -> FHIRAbstractModel:
    """The R4B model of a valid R4 resource; 400 with every problem otherwise."""
    check_r4(resource)
    return model_class(resource["resourceType"]).model_validate(resource)


def _r4b_only(node: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in R4B_ONLY_ELEMENTS:
                yield f"{path}.{key}", key
            yield from _r4b_only(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _r4b_only(item, f"{path}[{i}]")


def _empty(node: Any, path: str) -> Iterator[str]:
    """Paths of `[]`, `{}` and `null` (the R4B models accept them; R4 JSON does not).

    A null inside an array is allowed only as the placeholder of a primitive array whose
    `_name` sibling carries extensions (`"given": [null]` with `"_given": [{...}]`)."""
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}"
            if value is None or value == [] or value == {}:
                yield where
            elif isinstance(value, list):
                paired = (key[1:] if key.startswith("_") else f"_{key}") in node
                for i, item in enumerate(value):
                    if (item is None and not paired) or item == {} or item == []:
                        yield f"{where}[{i}]"
                    else:
                        yield from _empty(item, f"{where}[{i}]")
            else:
                yield from _empty(value, where)


def _strings(values: object) -> frozenset[str]:
    return frozenset(v for v in values if isinstance(v, str)) if isinstance(values, list) else frozenset()


def _binding_issues(model: FHIRAbstractModel, path: str) -> Iterator[Issue]:
    """Missing required primitives, and codes outside a required binding (recorded as enum_values)."""
    for name, alias, required, allowed in _checked_fields(type(model)):
        value = getattr(model, name, None)
        if value is None:
            if required and getattr(model, f"{name}__ext", None) is None:
                yield Issue(code="required", expression=(f"{path}.{alias}",),
                            diagnostics=f"{path}.{alias}: this element is required")
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            where = f"{path}.{alias}" + (f"[{i}]" if isinstance(value, list) else "")
            if allowed and isinstance(item, str) and item not in allowed:
                yield Issue(code="code-invalid", expression=(where,),
                            diagnostics=f"{where}: '{item}' is not one of {', '.join(sorted(allowed))}")
            elif isinstance(item, FHIRAbstractModel):
                yield from _binding_issues(item, where)


@functools.cache
def _checked_fields(model: type[FHIRAbstractModel]) -> tuple[tuple[str, str, bool, frozenset[str]], ...]:
    """(name, JSON name, whether required, the codes a required binding allows) of each field of a model class
    that `_binding_issues` looks at: read off the class once (one entry per R4B class, a bounded set)."""
    fields = []
    for name, field in model.model_fields.items():
        if name == "fhir_comments":
            continue
        alias = field.alias or name
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        allowed = R4_REQUIRED_CODES.get(f"{model.__name__}.{alias}") or _strings(extra.get("enum_values"))
        # a "+" in enum_values marks a list the models truncated: only R4_REQUIRED_CODES can check those
        fields.append((name, alias, bool(extra.get("element_required")), frozenset() if "+" in allowed else allowed))
    return tuple(fields)
