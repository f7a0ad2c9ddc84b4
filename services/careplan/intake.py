"""Assessment intake: the `$generate` / `$apply` Parameters and the QuestionnaireResponse in them.

Malformed Parameters are a 400. An assessment that does not answer the catalog's
scar assessment Questionnaire properly is a 422 listing *every* problem at once,
each with the FHIRPath of the offending answer, so an integration engine can fix
its mapping in one round trip.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from services.fhir.characters import unsafe_strings
from services.fhir.outcome import BadRequest, Issue, Unprocessable
from services.fhir.searchparams import normalise
from services.fhir.validation import r4_issues

REFERENCE = re.compile(r"^[A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")
ANSWER_TYPES = {
    "boolean": ("valueBoolean",),
    "integer": ("valueInteger",),
    "decimal": ("valueDecimal", "valueInteger"),
    "string": ("valueString",),
    "text": ("valueString",),
    "date": ("valueDate",),
    "dateTime": ("valueDateTime",),
    "choice": ("valueCoding",),
    "open-choice": ("valueCoding", "valueString"),
}


@dataclass(frozen=True)
class Allergy:
    system: str | None
    code: str | None
    text: str | None

    @property
    def name(self) -> str:
        return normalise(self.text or self.code or "")


@dataclass
class GenerateRequest:
    subject: str
    assessment: dict[str, Any]
    allergy_intolerances: list[dict[str, Any]] = field(default_factory=list)
    conditions: list[dict[str, Any]] = field(default_factory=list)
    start: date | None = None
    plan_definition: str | None = None
    status: str = "draft"
    practitioner: str | None = None
    patient: dict[str, Any] | None = None
    """The subject's Patient resource when the caller sends it: its birth date bounds the scar's age."""


@dataclass
class Assessment:
    """The answers that drive planning, read from a checked QuestionnaireResponse."""

    response: dict[str, Any]
    subject: str
    answers: dict[str, list[Any]]

    def one(self, link_id: str) -> Any:
        values = self.answers.get(link_id, [])
        return values[0] if values else None

    @property
    def scar_type(self) -> dict[str, Any] | None:
        return _coding(self.one("scar-type"))

    @property
    def body_site(self) -> dict[str, Any] | None:
        return _coding(self.one("body-site"))

    @property
    def key(self) -> str:
        key = assessment_key(self.response)
        assert key is not None, "check_assessment refuses assessments without id or identifier"
        return key

    def allergies(self, intolerances: list[dict[str, Any]]) -> list[Allergy]:
        """Allergy answers and AllergyIntolerance codes and texts, each distinct one once, in order."""
        found = []
        for value in self.answers.get("allergy", []):
            if isinstance(value, dict):
                found.append(Allergy(value.get("system"), value.get("code"), value.get("display")))
            else:
                found.append(Allergy(None, None, str(value)))
        for intolerance in intolerances:
            code = intolerance.get("code") or {}
            for coding in code.get("coding", []):
                found.append(Allergy(coding.get("system"), coding.get("code"), coding.get("display")))
            if code.get("text"):
                found.append(Allergy(None, None, code["text"]))
        unique: dict[tuple[str | None, str | None, str], Allergy] = {}
        for allergy in found:
            unique.setdefault((allergy.system, allergy.code, allergy.name), allergy)
        return list(unique.values())


def _coding(answer: Any) -> dict[str, Any] | None:
    return answer if isinstance(answer, dict) else None


def assessment_key(response: dict[str, Any]) -> str | None:
    """What makes two submissions the same assessment: its identifier, else its id."""
    identifier = response.get("identifier") or {}
    if isinstance(identifier, dict) and identifier.get("value"):
        return f"{identifier.get('system', '')}|{identifier['value']}"
    if response.get("id"):
        return f"QuestionnaireResponse/{response['id']}"
    return None


def stored_response_id(subject: str, key: str) -> str:
    """The id the care-plan service stores an assessment under (stable, never the client's own id)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{subject}\n{key}"))


# ---------------------------------------------------------------- Parameters


def _parameters(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise BadRequest("The operation takes a Parameters resource", expression="resourceType", code="structure")
    issues = r4_issues(body)
    if issues:
        raise BadRequest(issues[0].diagnostics, issues=issues)
    unsafe = [_unsafe_issue(body, path, character) for path, character in unsafe_strings(body, "Parameters")]
    if unsafe:
        raise Unprocessable(f"{len(unsafe)} text value(s) hold characters a FHIR string cannot carry", issues=unsafe)
    return list(body.get("parameter", []))


def _unsafe_issue(body: dict[str, Any], path: str, character: str) -> Issue:
    """Name the questionnaire item (its linkId) when the string is part of an assessment answer."""
    link_id = _link_id_on_path(body, path)
    where = f" (the answer to '{link_id}')" if link_id else ""
    return _issue(path, f"{path}{where} holds the character {character}, which FHIR strings and XHTML narratives "
                        "cannot carry; remove it", "value")


def _link_id_on_path(body: Any, path: str) -> str | None:
    link_id, node = None, body
    for name, index in re.findall(r"\.(\w+)(?:\[(\d+)\])?", path):
        node = node.get(name) if isinstance(node, dict) else None
        if index and isinstance(node, list):
            node = node[int(index)]
            if name == "item" and isinstance(node, dict) and isinstance(node.get("linkId"), str):
                link_id = node["linkId"]
    return link_id


def _reference(parameter: dict[str, Any], where: str) -> str:
    value = parameter.get("valueReference", {}).get("reference") or parameter.get("valueString")
    if not isinstance(value, str) or not REFERENCE.match(value):
        raise BadRequest(f"{where} must be a reference such as Patient/123", expression=where)
    return value


def parse_generate(body: Any) -> GenerateRequest:
    """$generate Parameters: subject, assessment, allergyIntolerance*, condition*, start, planDefinition, status."""
    parameters = _parameters(body)
    found: dict[str, Any] = {"allergyIntolerance": [], "condition": []}
    for i, parameter in enumerate(parameters):
        name, where = parameter.get("name"), f"Parameters.parameter[{i}]"
        if name == "subject":
            found["subject"] = _reference(parameter, where)
        elif name == "assessment":
            found["assessment"] = _resource(parameter, where, "QuestionnaireResponse")
        elif name == "allergyIntolerance":
            found["allergyIntolerance"].append(_resource(parameter, where, "AllergyIntolerance"))
        elif name == "condition":
            found["condition"].append(_resource(parameter, where, "Condition"))
        elif name == "start":
            found["start"] = _date(parameter, where)
        elif name == "planDefinition":
            found["planDefinition"] = _canonical(parameter, where)
        elif name == "status":
            value = parameter.get("valueCode") or parameter.get("valueString")
            if value not in ("draft", "active"):
                raise BadRequest(f"{where}: status must be draft or active", expression=f"{where}.value")
            found["status"] = value
        elif name == "practitioner":
            found["practitioner"] = _reference(parameter, where)
        elif name == "patient":
            found["patient"] = _resource(parameter, where, "Patient")
        else:
            raise BadRequest(f"{where}: unknown parameter '{name}'", expression=f"{where}.name")
    for required in ("subject", "assessment"):
        if required not in found:
            raise BadRequest(f"The '{required}' parameter is required", expression="Parameters.parameter",
                             code="required")
    return GenerateRequest(subject=found["subject"], assessment=found["assessment"],
                           allergy_intolerances=found["allergyIntolerance"], conditions=found["condition"],
                           start=found.get("start"), plan_definition=found.get("planDefinition"),
                           status=found.get("status", "draft"), practitioner=found.get("practitioner"),
                           patient=found.get("patient"))


def parse_apply(body: Any, plan_definition: str | None = None) -> GenerateRequest:
    """PlanDefinition/$apply Parameters: subject (1..*; one supported) and a `data` Bundle with the assessment."""
    parameters = _parameters(body)
    subject, assessment, allergies, conditions, start, practitioner, patient = None, None, [], [], None, None, None
    for i, parameter in enumerate(parameters):
        name, where = parameter.get("name"), f"Parameters.parameter[{i}]"
        if name == "subject":
            if subject is not None:
                raise BadRequest("One subject per $apply is supported", expression=where, code="not-supported")
            subject = _reference(parameter, where)
        elif name == "data":
            bundle = _resource(parameter, where, "Bundle")
            for j, entry in enumerate(bundle.get("entry", [])):
                resource = entry.get("resource") or {}
                kind = resource.get("resourceType")
                if kind == "QuestionnaireResponse":
                    if assessment is not None:
                        raise BadRequest("The data Bundle holds more than one QuestionnaireResponse",
                                         expression=f"{where}.resource.entry[{j}]")
                    assessment = resource
                elif kind == "AllergyIntolerance":
                    allergies.append(resource)
                elif kind == "Condition":
                    conditions.append(resource)
                elif kind == "Patient":
                    patient = resource
        elif name == "planDefinition":
            plan_definition = plan_definition or _canonical(parameter, where)
        elif name in ("start", "periodStart"):
            start = _date(parameter, where)
        elif name == "practitioner":
            practitioner = _reference(parameter, where)
        elif name in ("encounter", "organization", "userType", "userLanguage", "userTaskContext", "setting",
                      "settingContext", "useServerData"):
            continue
        else:
            raise BadRequest(f"{where}: unknown parameter '{name}'", expression=f"{where}.name")
    if subject is None:
        raise BadRequest("The 'subject' parameter is required", expression="Parameters.parameter", code="required")
    if assessment is None:
        raise BadRequest("The 'data' Bundle must hold the assessment QuestionnaireResponse",
                         expression="Parameters.parameter", code="required")
    return GenerateRequest(subject=subject, assessment=assessment, allergy_intolerances=allergies,
                           conditions=conditions, start=start, plan_definition=plan_definition,
                           practitioner=practitioner, patient=patient)


def _resource(parameter: dict[str, Any], where: str, kind: str) -> dict[str, Any]:
    resource = parameter.get("resource")
    if not isinstance(resource, dict) or resource.get("resourceType") != kind:
        raise BadRequest(f"{where} must carry a {kind} resource", expression=f"{where}.resource")
    return resource


def _date(parameter: dict[str, Any], where: str) -> date:
    moment = parameter.get("valueDateTime")
    value = parameter.get("valueDate") or (moment[:10] if isinstance(moment, str) else None) \
        or parameter.get("valueString")
    try:
        return date.fromisoformat(value if isinstance(value, str) else "")
    except ValueError:
        raise BadRequest(f"{where}: start must be a date (YYYY-MM-DD)", expression=f"{where}.value") from None


def _canonical(parameter: dict[str, Any], where: str) -> str:
    value = parameter.get("valueCanonical") or parameter.get("valueUri") or parameter.get("valueString")
    if not isinstance(value, str) or "://" not in value:
        raise BadRequest(f"{where}: planDefinition must be a canonical URL", expression=f"{where}.value")
    return value


# -------------------------------------------------------------- Questionnaire

ValueSetCodes = Mapping[str, Mapping[tuple[str, str], str]]
"""(system, code) pairs of each answer value set the Questionnaire names, by canonical, each with the catalog's
display (fetched beforehand: checking runs in a worker thread, away from the event loop and its HTTP client)."""


def check_assessment(request: GenerateRequest, questionnaire: dict[str, Any],
                     value_set_codes: ValueSetCodes) -> Assessment:
    """Check the QuestionnaireResponse against the Questionnaire; 422 with every problem found.

    Its R4 structure is already checked: every GenerateRequest comes from Parameters that passed `r4_issues`
    whole, contained resources included (validating the assessment a second time cost a tenth of a plan)."""
    response = request.assessment
    issues: list[Issue] = []
    if response.get("status") not in ("completed", "amended"):
        issues.append(_issue("QuestionnaireResponse.status", "The assessment must be completed (or amended)",
                             "business-rule"))
    expected = questionnaire["url"]
    given = response.get("questionnaire", "")
    if given.split("|", 1)[0] != expected:
        issues.append(_issue("QuestionnaireResponse.questionnaire",
                             f"The assessment answers '{given or 'no questionnaire'}', not {expected}", "value"))
    subject = (response.get("subject") or {}).get("reference")
    if subject and subject != request.subject:
        issues.append(_issue("QuestionnaireResponse.subject",
                             f"The assessment is about {subject} but the subject parameter is {request.subject}",
                             "business-rule"))
    patient_id = (request.patient or {}).get("id")
    if patient_id and f"Patient/{patient_id}" != request.subject:
        issues.append(_issue("Patient.id", f"The Patient resource sent is Patient/{patient_id} but the subject "
                             f"parameter is {request.subject}", "business-rule"))
    if not response.get("id") and not (response.get("identifier") or {}).get("value"):
        issues.append(_issue("QuestionnaireResponse", "The assessment needs an id or an identifier so that "
                             "resubmitting it cannot create a second plan", "required"))
    items = {item["linkId"]: item for item in questionnaire.get("item", [])}
    answers: dict[str, list[Any]] = {}
    seen: set[str] = set()
    for i, item in enumerate(response.get("item", [])):
        where = f"QuestionnaireResponse.item[{i}]"
        link_id = item.get("linkId")
        question = items.get(link_id)
        if question is None:
            issues.append(_issue(f"{where}.linkId", f"'{link_id}' is not a question of {expected}", "value"))
            continue
        if link_id in seen:
            issues.append(_issue(where, f"'{link_id}' is answered twice", "structure"))
            continue
        seen.add(link_id)
        values = _answers(item, question, where, value_set_codes, issues)
        answers[link_id] = values
    for link_id, question in items.items():
        if question.get("required") and not answers.get(link_id):
            issues.append(_issue("QuestionnaireResponse.item",
                                 f"The required question '{link_id}' ({question.get('text', '')}) is not answered",
                                 "required"))
    if issues:
        raise Unprocessable(f"The assessment has {len(issues)} problem(s)", issues=issues)
    return Assessment(response=response, subject=request.subject, answers=answers)


def _answers(item: dict[str, Any], question: dict[str, Any], where: str, value_set_codes: ValueSetCodes,
             issues: list[Issue]) -> list[Any]:
    allowed = ANSWER_TYPES.get(question.get("type", ""), ())
    given = item.get("answer", [])
    if len(given) > 1 and not question.get("repeats"):
        issues.append(_issue(f"{where}.answer", f"'{item['linkId']}' takes one answer, not {len(given)}",
                             "structure"))
    values = []
    for j, answer in enumerate(given):
        here = f"{where}.answer[{j}]"
        kinds = [k for k in answer if k.startswith("value")]
        if len(kinds) != 1 or kinds[0] not in allowed:
            issues.append(_issue(here, f"'{item['linkId']}' takes {' or '.join(allowed) or 'no answer'}, "
                                 f"not {', '.join(kinds) or 'an empty answer'}", "value"))
            continue
        value = answer[kinds[0]]
        if kinds[0] == "valueCoding" and question.get("answerValueSet"):
            codes = value_set_codes[question["answerValueSet"]]
            key = (value.get("system", ""), value.get("code", ""))
            if key not in codes:
                issues.append(_issue(here, f"{value.get('system')}|{value.get('code')} is not in "
                                     f"{question['answerValueSet']}", "code-invalid"))
                continue
            # Plans show the catalog's display for a code, never the one the caller sent with it
            value = {**value, "display": codes[key]} if codes[key] else value
        if kinds[0] == "valueInteger" and value < 0:
            issues.append(_issue(here, f"'{item['linkId']}' cannot be negative", "value"))
            continue
        values.append(value)
    return values


def _issue(expression: str, diagnostics: str, code: str) -> Issue:
    return Issue(code=code, diagnostics=diagnostics, expression=(expression,))
