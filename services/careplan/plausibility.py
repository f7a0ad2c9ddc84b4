"""Plausibility of an assessment: the Questionnaire's own constraints, evaluated over the answers.

The rules are catalog content: `questionnaire-constraint` extensions (FHIR R4 core) on the
scar assessment Questionnaire, each a FHIRPath expression over the QuestionnaireResponse
with a severity, a sentence for people and the item it is about (`location`). A violated
`error` refuses the assessment (422 naming the item); a violated `warning` is kept and
shown on the plan (and in the `$apply` OperationOutcome), because the clinician may be
right and the rule of thumb wrong.

Expressions see `%resource` (the response) and `%patientAgeMonths`: the patient's age in
whole months on the day of the assessment, when the request carries the subject's Patient
with a birth date (empty otherwise, so rules about it do not apply).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from services.fhir.outcome import FhirError, Issue, Unprocessable

CONSTRAINT = "http://hl7.org/fhir/StructureDefinition/questionnaire-constraint"
LINK_ID = re.compile(r"linkId\s*=\s*'([^']+)'")

Run = Callable[[str, Any, dict[str, Any]], list[Any]]


@dataclass(frozen=True)
class Constraint:
    key: str
    severity: str
    expression: str
    human: str
    link_id: str | None


def constraints(questionnaire: dict[str, Any]) -> list[Constraint]:
    found = []
    for extension in questionnaire.get("extension", []):
        if extension.get("url") != CONSTRAINT:
            continue
        parts = {e.get("url"): next((v for k, v in e.items() if k.startswith("value")), None)
                 for e in extension.get("extension", [])}
        expression, human = parts.get("expression"), parts.get("human")
        if not expression or not isinstance(expression, str):
            continue
        link = LINK_ID.search(parts.get("location") or "")
        found.append(Constraint(key=parts.get("key") or "", severity=parts.get("severity") or "error",
                                expression=expression, human=human if human and isinstance(human, str) else expression,
                                link_id=link.group(1) if link else None))
    return found


def age_in_months(birth_date: str | None, on: date) -> int | None:
    """Whole months from the earliest day a (possibly partial) birth date allows to `on`: never too young."""
    if not isinstance(birth_date, str):
        return None
    parts = birth_date.split("-")
    try:
        born = date(int(parts[0]), int(parts[1]) if len(parts) > 1 else 1, int(parts[2]) if len(parts) > 2 else 1)
    except (ValueError, IndexError):
        return None
    months = (on.year - born.year) * 12 + on.month - born.month - (on.day < born.day)
    return max(months, 0)


def assessment_day(response: dict[str, Any], today: date) -> date:
    authored = response.get("authored")
    try:
        return date.fromisoformat(authored[:10]) if isinstance(authored, str) else today
    except ValueError:
        return today


def check(questionnaire: dict[str, Any], response: dict[str, Any], patient: dict[str, Any] | None,
          run: Run, today: date) -> list[Issue]:
    """The warnings of the Questionnaire's constraints; raises 422 with every violated error constraint."""
    age = age_in_months((patient or {}).get("birthDate"), assessment_day(response, today))
    variables: dict[str, Any] = {"resource": response, "context": response,
                                 "patientAgeMonths": [] if age is None else age}
    items = {item.get("linkId"): i for i, item in enumerate(response.get("item", []))}
    errors: list[Issue] = []
    warnings: list[Issue] = []
    for rule in constraints(questionnaire):
        try:
            holds = run(rule.expression, response, variables) == [True]
        except FhirError:
            raise  # the catalog's expression does not compile: say so, never skip the rule
        except Exception:  # noqa: BLE001 - an answer of an unexpected type is reported by intake, not here
            continue
        if holds:
            continue
        where = f"QuestionnaireResponse.item[{items[rule.link_id]}]" if rule.link_id in items else \
            "QuestionnaireResponse"
        about = f"'{rule.link_id}': " if rule.link_id else ""
        issue = Issue(code="business-rule" if rule.severity == "warning" else "value",
                      severity="warning" if rule.severity == "warning" else "error",
                      diagnostics=f"{about}{rule.human}", expression=(where,))
        (warnings if rule.severity == "warning" else errors).append(issue)
    if errors:
        raise Unprocessable(f"The assessment has {len(errors)} implausible answer(s)", issues=errors)
    return warnings
