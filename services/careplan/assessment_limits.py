"""What one `$generate` or `$apply` may hold, checked before anything costly reads it.

A scar assessment answers nine questions, one or a few answers each; a patient's
allergies and intolerances are counted in tens. The limits below (settings, see
"Bad input" in README.md) sit far above that and far below what would make
validation, planning or the condition cache costly. `check_request` counts and
measures on the raw JSON, before R4 validation, so an oversized request costs a walk
over its structure and nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from services.careplan.intake import Allergy
from services.careplan.settings import CareplanSettings
from services.fhir.limits import InputLimits, Limit, limit
from services.fhir.outcome import Unprocessable

START = "Parameters.parameter.where(name = 'start').value"


@dataclass(frozen=True)
class AssessmentLimits:
    inputs: InputLimits
    answers_per_item: Limit
    allergies: Limit
    start_past_days: Limit
    start_future_days: Limit

    @classmethod
    def of(cls, settings: CareplanSettings) -> AssessmentLimits:
        return cls(inputs=InputLimits.of(settings), answers_per_item=limit(settings, "MAX_ANSWERS_PER_ITEM"),
                   allergies=limit(settings, "MAX_ALLERGIES"), start_past_days=limit(settings, "PLAN_START_PAST_DAYS"),
                   start_future_days=limit(settings, "PLAN_START_FUTURE_DAYS"))

    def check_request(self, body: Any) -> None:
        """Entries, answers per item, and the lengths of codings, answer texts and canonicals of a request."""
        self.inputs.check_parameters(body)
        if not isinstance(body, dict) or not isinstance(body.get("parameter"), list):
            return  # not Parameters: intake says what is wrong with it
        for i, parameter in enumerate(body["parameter"]):
            if not isinstance(parameter, dict):
                continue
            where = f"Parameters.parameter[{i}]"
            if parameter.get("name") == "planDefinition":
                for key in ("valueCanonical", "valueUri", "valueString"):
                    self.inputs.canonical_length.check_length(parameter.get(key), "The planDefinition canonical",
                                                              f"{where}.{key}")
            if isinstance(parameter.get("resource"), dict):
                self._check_resource(parameter["resource"], f"{where}.resource")

    def _check_resource(self, resource: dict[str, Any], where: str) -> None:
        kind = resource.get("resourceType")
        if kind == "QuestionnaireResponse":
            self._check_items(resource.get("item"), f"{where}.item")
        elif kind == "AllergyIntolerance":
            code = resource.get("code")
            codings = code.get("coding") if isinstance(code, dict) else None
            for j, coding in enumerate(codings if isinstance(codings, list) else []):
                self.inputs.check_coding(coding, f"{where}.code.coding[{j}]")
        elif kind == "Bundle" and isinstance(resource.get("entry"), list):
            self.inputs.parameters.check_count(resource["entry"], "Entries of the data Bundle", f"{where}.entry")
            for j, entry in enumerate(resource["entry"]):
                if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                    self._check_resource(entry["resource"], f"{where}.entry[{j}].resource")

    def _check_items(self, items: Any, where: str) -> None:
        for i, item in enumerate(items if isinstance(items, list) else []):
            if not isinstance(item, dict):
                continue
            here = f"{where}[{i}]"
            answers = item.get("answer")
            if isinstance(answers, list):
                self.answers_per_item.check_count(answers, f"Answers to '{str(item.get('linkId'))[:64]}'",
                                                  f"{here}.answer")
                for j, answer in enumerate(answers):
                    if isinstance(answer, dict):
                        self.inputs.check_coding(answer.get("valueCoding"), f"{here}.answer[{j}].valueCoding")
                        self.inputs.code_length.check_length(answer.get("valueString"), "The answer's text",
                                                             f"{here}.answer[{j}].valueString")
                        self._check_items(answer.get("item"), f"{here}.answer[{j}].item")
            self._check_items(item.get("item"), f"{here}.item")

    def check_allergies(self, allergies: Sequence[Allergy]) -> None:
        """The de-duplicated allergies and intolerances (answers and AllergyIntolerance resources together)."""
        self.allergies.check_count(allergies, "Distinct allergies and intolerances",
                                   "QuestionnaireResponse.item.where(linkId = 'allergy').answer")

    def check_start(self, start: date, today: date) -> None:
        """A plan starts at most PLAN_START_PAST_DAYS before today (recording a course already begun) and at
        most PLAN_START_FUTURE_DAYS after it."""
        past, future = self.start_past_days, self.start_future_days
        earliest, latest = today - timedelta(days=past.value), today + timedelta(days=future.value)
        if not earliest <= start <= latest:
            raise Unprocessable(f"The start date {start.isoformat()} is outside the plausible range {earliest} to "
                                f"{latest} ({past.setting}, {future.setting})", expression=START, code="value")


DEFAULT_LIMITS = AssessmentLimits.of(CareplanSettings.model_construct())
"""The documented defaults (not read from the environment), for planning outside the service."""
