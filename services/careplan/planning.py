"""Applying a protocol to an assessment: which activities, with which preparations, and what is left out.

Everything clinical comes from catalog content: applicability conditions (FHIRPath
over the assessment), group selection behaviours, the screening rule sets and the
class facts of each preparation. This module only evaluates them:

- an action applies when all its applicability conditions are true;
- a group with `requiredBehavior = could` lists alternatives the clinician may pick
  (named on the plan, not scheduled); they pass the same screening as planned
  activities, and one that screening leaves out is not offered but listed with its
  reason; other groups are planned, `exactly-one` and
  `at-most-one` taking their first child that survives screening, `all-or-none`
  dropping every child when one is excluded;
- an ActivityDefinition of kind CarePlan sets the course (timingRange, course-break),
  one of kind CommunicationRequest becomes an instruction to the clinician (what to
  tell the patient before treatment);
- screening excludes preparations (by class, by allergy on ingredient code or
  name) and modalities (declined); a drug-delivery procedure whose preparations
  are all excluded is excluded too. Exclusions stay on the plan with every reason that
  applies (a retinoid for a patient both pregnant and breastfeeding carries both).

Names shown for an activity are derived after screening (its title, which names no
preparation, and the preparations left to it), so they never name what was left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.careplan.allergens import Allergen, allergens, first_allergen
from services.careplan.intake import Allergy, Assessment
from services.careplan.knowledge import (
    CLINIC_DEFAULT,
    COURSE_BREAK,
    DELIVERED_PREPARATION,
    GOAL_CONDITION,
    MINIMUM_INTERVAL,
    NOT_SAME_DAY_AS,
    NOT_SAME_DAY_GAP,
    NOT_SAME_DAY_REASON,
    SCHEDULING_RANK,
    ExpressionCache,
    Protocol,
    codings,
    duration_days,
    extensions,
)
from services.careplan.scheduling import UNRANKED, Rhythm

MEDICATION_CLASS_SYSTEM = "https://fhir.cicatrix.org/CodeSystem/medication-class"
SCAR_CARE_SYSTEM = "https://fhir.cicatrix.org/CodeSystem/scar-care"
RULE_ALLERGY = (SCAR_CARE_SYSTEM, "allergy")
RULE_DECLINED = (SCAR_CARE_SYSTEM, "declined")
RULE_NO_PREPARATION = (SCAR_CARE_SYSTEM, "no-remaining-preparation")


@dataclass(frozen=True)
class Exclusion:
    """Why something was left out: the rule's reason code and its sentence for the clinician."""

    reason: dict[str, Any]
    text: str

    def concept(self) -> dict[str, Any]:
        return {"coding": codings(self.reason), "text": self.text}

    def __add__(self, other: Exclusion) -> Exclusion:
        """Both reasons: the codings of each, their texts one after the other (a reason is never dropped)."""
        if other.text in self.text and all(c in codings(self.reason) for c in codings(other.reason)):
            return self
        coding = codings(self.reason) + [c for c in codings(other.reason) if c not in codings(self.reason)]
        texts = [t for t in (self.reason.get("text"), other.reason.get("text")) if t]
        return Exclusion({"coding": coding, "text": "; ".join(dict.fromkeys(texts))} if texts else {"coding": coding},
                         f"{self.text} {other.text}")


def combined(exclusions: list[Exclusion]) -> Exclusion | None:
    """One exclusion carrying every reason in `exclusions` (None when there is none)."""
    result: Exclusion | None = None
    for exclusion in exclusions:
        result = exclusion if result is None else result + exclusion
    return result


@dataclass
class Preparation:
    medication: dict[str, Any]
    reference: str
    exclusion: Exclusion | None = None

    @property
    def name(self) -> str:
        code = self.medication.get("code") or {}
        name: str = code.get("text") or next((c["display"] for c in codings(code) if c.get("display")), self.reference)
        return name


@dataclass
class PlannedActivity:
    key: str
    title: str
    definition: dict[str, Any]
    preparations: list[Preparation] = field(default_factory=list)
    goal_ids: list[str] = field(default_factory=list)
    exclusion: Exclusion | None = None
    rhythm: Rhythm | None = None
    min_interval_days: int = 1
    not_same_day: list[str] = field(default_factory=list)
    """Canonicals of ActivityDefinitions that must not share a day with this one."""
    clinic_default: str | None = None
    """What of the rhythm (or home-care timing) the clinic chose where the clinical source is silent."""
    apart_days: int = 1
    """Least days between this procedure and one in `not_same_day` (the definition's not-same-day-gap)."""
    apart_reason: str = ""
    """Why it is kept apart from them (the definition's not-same-day-reason; says when it is a clinic default)."""
    rank: int = UNRANKED
    """Scheduling rank from the protocol (1 first) when the weekly visit budget cannot hold every procedure."""

    @property
    def is_home_care(self) -> bool:
        return self.definition.get("kind") == "MedicationRequest"

    @property
    def usable_preparations(self) -> list[Preparation]:
        return [p for p in self.preparations if p.exclusion is None]

    @property
    def name(self) -> str:
        """The title with the preparations screening left to it: what a clinician may actually use."""
        usable = self.usable_preparations
        return f"{self.title}: {', '.join(p.name for p in usable)}" if usable else self.title


@dataclass(frozen=True)
class LeftOut:
    """An alternative screening removed: not offered, but said why."""

    title: str
    exclusion: Exclusion


@dataclass
class Course:
    months_low: int
    months_high: int
    break_days: int
    title: str


@dataclass
class Communication:
    """Something the clinician tells the patient before treatment (an ActivityDefinition of kind
    CommunicationRequest): an instruction, never a claim that it has been done."""

    key: str
    title: str
    text: str
    definition: dict[str, Any]


@dataclass
class PlanDraft:
    protocol: Protocol
    goals: list[dict[str, Any]]
    activities: list[PlannedActivity]
    alternatives: list[str]
    """Names of the options the clinician may choose instead, each screened like a planned activity."""
    notes: list[str]
    course: Course | None
    screening_notes: list[str] = field(default_factory=list)
    communications: list[Communication] = field(default_factory=list)
    alternatives_left_out: list[LeftOut] = field(default_factory=list)
    """Alternatives screening removed, with the reason; never offered."""

    def planned(self) -> list[PlannedActivity]:
        """Activities that survived screening (in-clinic and home care)."""
        return [a for a in self.activities if a.exclusion is None]


@dataclass
class Screening:
    excluded_classes: dict[tuple[str, str], Exclusion] = field(default_factory=dict)
    allergy: Exclusion | None = None
    declined: Exclusion | None = None
    no_preparation: Exclusion | None = None
    allergies: list[Allergen] = field(default_factory=list)
    """The patient's allergies, prepared once for matching against every preparation (allergens.py)."""
    declined_codes: set[tuple[str, str]] = field(default_factory=set)


class _Answers(ExpressionCache):
    """One assessment's result for each expression: protocols repeat a condition over many actions and rules,
    and evaluating FHIRPath is the costliest step of planning."""

    def __init__(self, expressions: ExpressionCache) -> None:
        super().__init__(expressions.compiled, expressions.results)
        self.truth: dict[str, bool] = {}

    def is_true(self, expression: str, resource: Any, variables: dict[str, Any]) -> bool:
        if expression not in self.truth:
            self.truth[expression] = super().is_true(expression, resource, variables)
        return self.truth[expression]


def make_plan(protocol: Protocol, assessment: Assessment, allergies: list[Allergy],
              expressions: ExpressionCache) -> PlanDraft:
    variables = {"resource": assessment.response, "context": assessment.response}
    expressions = _Answers(expressions)  # the same resource and variables throughout this plan

    def applies(element: dict[str, Any]) -> bool:
        return all(expressions.is_true(e, assessment.response, variables) for e in protocol.applicability(element))

    screening = _screening(protocol, assessment, allergies, expressions, variables)
    draft = PlanDraft(protocol=protocol, goals=[], activities=[], alternatives=[], notes=[], course=None)
    for goal in protocol.plan.get("goal", []):
        conditions = [e.get("expression") for e in extensions(goal, GOAL_CONDITION) if isinstance(e, dict)]
        if all(expressions.is_true(c, assessment.response, variables) for c in conditions if c):
            draft.goals.append(goal)
    goal_ids = [g["id"] for g in draft.goals if g.get("id")]  # ordered: plans must be reproducible
    for action in protocol.plan.get("action", []):
        if applies(action):
            _apply_action(action, protocol, screening, draft, applies, goal_ids)
    return draft


def _apply_action(action: dict[str, Any], protocol: Protocol, screening: Screening, draft: PlanDraft,
                  applies: Any, goal_ids: list[str]) -> None:
    definition = protocol.activity(action.get("definitionCanonical", "")) if action.get("definitionCanonical") \
        else None
    children = [child for child in action.get("action", []) if applies(child)]
    if definition is not None and definition.get("kind") == "CarePlan":
        timing = action.get("timingRange") or definition.get("timingRange") or {}
        breaks = extensions(action, COURSE_BREAK) or extensions(definition, COURSE_BREAK)
        draft.course = Course(months_low=int(timing.get("low", {}).get("value", 0)),
                              months_high=int(timing.get("high", timing.get("low", {})).get("value", 0)),
                              break_days=duration_days(breaks[0]) if breaks else 0,
                              title=action.get("title") or definition.get("title", ""))
        if action.get("textEquivalent"):
            draft.notes.append(action["textEquivalent"])
        return
    if definition is not None and definition.get("kind") == "CommunicationRequest":
        draft.communications.append(Communication(
            key=action.get("id") or definition.get("id", ""), title=action.get("title") or definition.get("title", ""),
            text=action.get("textEquivalent") or definition.get("description") or "", definition=definition))
        return
    if action.get("requiredBehavior") == "could":
        _alternatives(children, protocol, screening, applies, goal_ids, draft)
        return
    if definition is not None:
        draft.activities.append(_activity(action, definition, protocol, screening, goal_ids))
        return
    activities, alternatives = _group(action, protocol, screening, applies, goal_ids)
    draft.activities.extend(activities)
    draft.alternatives.extend(alternatives)


def _group(action: dict[str, Any], protocol: Protocol, screening: Screening, applies: Any,
           goal_ids: list[str]) -> tuple[list[PlannedActivity], list[str]]:
    """Resolve a group by its selectionBehavior; each child (an activity or a nested group) is one option.

    Returns the activities it contributes (chosen ones and visible exclusions) and the titles of usable options
    that were not chosen (alternatives)."""
    options: list[tuple[str, list[PlannedActivity]]] = []
    alternatives: list[str] = []
    for child in action.get("action", []):
        if not applies(child):
            continue
        if child.get("definitionCanonical"):
            definition = protocol.activity(child["definitionCanonical"]) or {}
            activity = _activity(child, definition, protocol, screening, goal_ids)
            options.append((activity.title, [activity]))
        elif child.get("action"):
            nested, nested_alternatives = _group(child, protocol, screening, applies, goal_ids)
            options.append((child.get("title", ""), nested))
            alternatives.extend(nested_alternatives)
    behaviour = action.get("selectionBehavior")
    if behaviour in ("exactly-one", "at-most-one"):
        chosen = next((option for option in options if _usable(option[1])), None)
        activities = []
        for title, option in options:
            if option is (chosen[1] if chosen else None):
                activities.extend(option)
            else:
                activities.extend(a for a in option if a.exclusion is not None)
                if _usable(option) and chosen:
                    alternatives.append(f"{title} (instead of {chosen[0]})")
        return activities, alternatives
    activities = [a for _, option in options for a in option]
    if behaviour == "all-or-none" and any(a.exclusion for a in activities):
        first = next(a for a in activities if a.exclusion)
        for activity in activities:
            activity.exclusion = activity.exclusion or Exclusion(
                first.exclusion.reason if first.exclusion else {},
                f"Left out with {first.title}: the regimen is used whole or not at all")
    return activities, alternatives


def _usable(activities: list[PlannedActivity]) -> bool:
    return bool(activities) and all(a.exclusion is None for a in activities)


def _alternatives(children: list[dict[str, Any]], protocol: Protocol, screening: Screening, applies: Any,
                  goal_ids: list[str], draft: PlanDraft) -> None:
    """Options for the clinician, screened exactly like planned activities: offered by their screened name, or
    listed as left out with the reason."""
    for child in children:
        if child.get("definitionCanonical"):
            definition = protocol.activity(child["definitionCanonical"]) or {}
            options = [_activity(child, definition, protocol, screening, goal_ids)]
        else:
            options, nested = _group(child, protocol, screening, applies, goal_ids)
            draft.alternatives.extend(nested)
        title = child.get("title") or (options[0].title if len(options) == 1 else "")
        excluded = next((a for a in options if a.exclusion is not None), None)
        if excluded is not None and excluded.exclusion is not None:
            draft.alternatives_left_out.append(LeftOut(title, excluded.exclusion))
        elif options and title:
            draft.alternatives.append(options[0].name if len(options) == 1 else title)


@dataclass(frozen=True)
class ActivityTerms:
    """What the catalog says about one action and its ActivityDefinition: the same for every plan drafted from the
    protocol, so it is read from the content once (`Protocol.terms`) and each plan adds its own goals, preparations
    and screening."""

    key: str
    title: str
    definition: dict[str, Any]
    references: tuple[str, ...]
    """The preparations it delivers, as 'Medication/<id>' references."""
    goal_ids: tuple[str, ...]
    """The action's own goalId list (empty: every goal of the plan)."""
    rhythm: Rhythm | None
    min_interval_days: int
    not_same_day: tuple[str, ...]
    clinic_default: str | None
    apart_days: int
    apart_reason: str
    rank: int


def _terms(action: dict[str, Any], definition: dict[str, Any]) -> ActivityTerms:
    timing = action.get("timingTiming") or definition.get("timingTiming") or {}
    repeat = timing.get("repeat") or {}
    rhythm = None
    if repeat and definition.get("kind") != "MedicationRequest":
        rhythm = Rhythm(frequency=int(repeat.get("frequency", 1)), period=float(repeat.get("period", 1)),
                        period_unit=repeat.get("periodUnit", "wk"), count=int(repeat.get("count", 1)),
                        count_max=repeat.get("countMax"))
    intervals = extensions(definition, MINIMUM_INTERVAL)
    references = [v.get("reference", "") for v in extensions(action, DELIVERED_PREPARATION)] or \
                 [v.get("reference", "") for v in extensions(definition, DELIVERED_PREPARATION)]
    if not references and definition.get("productReference"):
        references = [definition["productReference"].get("reference", "")]
    return ActivityTerms(
        key=action.get("id") or definition.get("id", ""),
        title=action.get("title") or definition.get("title", ""),
        definition=definition,
        references=tuple(references),
        goal_ids=tuple(action.get("goalId", [])),
        rhythm=rhythm,
        min_interval_days=duration_days(intervals[0]) if intervals else 1,
        not_same_day=tuple(v for v in extensions(definition, NOT_SAME_DAY_AS) if isinstance(v, str)),
        clinic_default=next(iter(extensions(timing, CLINIC_DEFAULT) + extensions(
            ((definition.get("dosage") or [{}])[0].get("timing") or {}), CLINIC_DEFAULT)), None),
        apart_days=max([duration_days(v) for v in extensions(definition, NOT_SAME_DAY_GAP)] or [1]),
        apart_reason=next((v for v in extensions(definition, NOT_SAME_DAY_REASON) if isinstance(v, str)), ""),
        rank=next((int(v) for v in extensions(action, SCHEDULING_RANK) if isinstance(v, int)), UNRANKED),
    )


def _activity(action: dict[str, Any], definition: dict[str, Any], protocol: Protocol, screening: Screening,
              goal_ids: list[str]) -> PlannedActivity:
    """`action` (an action of `protocol.plan`, `definition` its ActivityDefinition) as this plan's activity, screened
    for this patient."""
    terms: ActivityTerms | None = protocol.terms.get(id(action))
    if terms is None:
        terms = protocol.terms[id(action)] = _terms(action, definition)
    activity = PlannedActivity(
        key=terms.key, title=terms.title, definition=terms.definition,
        preparations=[Preparation(protocol.medications[r], r) for r in terms.references if r in protocol.medications],
        goal_ids=[g for g in terms.goal_ids if g in goal_ids] or list(goal_ids),
        rhythm=terms.rhythm, min_interval_days=terms.min_interval_days, not_same_day=list(terms.not_same_day),
        clinic_default=terms.clinic_default, apart_days=terms.apart_days, apart_reason=terms.apart_reason,
        rank=terms.rank)
    _screen(activity, protocol, screening)
    return activity


# ------------------------------------------------------------------ screening


def _screening(protocol: Protocol, assessment: Assessment, allergies: list[Allergy], expressions: ExpressionCache,
               variables: dict[str, Any]) -> Screening:
    screening = Screening(allergies=allergens(allergies))
    screening.declined_codes = {(c.get("system", ""), c.get("code", "")) for c in
                                assessment.answers.get("declined-modality", []) if isinstance(c, dict)}
    for rules in protocol.screening:
        for rule in rules.get("action", []):
            conditions = protocol.applicability(rule)
            if not all(expressions.is_true(c, assessment.response, variables) for c in conditions):
                continue
            reason = (rule.get("reason") or [{}])[0]
            text = rule.get("textEquivalent") or rule.get("title", "")
            if extensions(rule, CLINIC_DEFAULT):  # say so: the clinical source does not state this rule
                text = f"{text.rstrip('.')} (clinic rule)."
            exclusion = Exclusion(reason, text)
            for concept in rule.get("code", []):
                for coding in codings(concept):
                    key = (coding.get("system", ""), coding.get("code", ""))
                    if key[0] == MEDICATION_CLASS_SYSTEM:
                        earlier = screening.excluded_classes.get(key)
                        screening.excluded_classes[key] = earlier + exclusion if earlier else exclusion
                    elif key == RULE_ALLERGY:
                        screening.allergy = exclusion
                    elif key == RULE_DECLINED:
                        screening.declined = exclusion
                    elif key == RULE_NO_PREPARATION:
                        screening.no_preparation = exclusion
    return screening


def _screen(activity: PlannedActivity, protocol: Protocol, screening: Screening) -> None:
    codes = {(c.get("system", ""), c.get("code", "")) for c in codings(activity.definition.get("code"))}
    declined = screening.declined if screening.declined and codes & screening.declined_codes else None
    for preparation in activity.preparations:
        found: list[Exclusion] = []  # every reason that applies is kept, not only the first
        for coding in protocol.classes.get(preparation.reference, []):
            key = (coding.get("system", ""), coding.get("code", ""))
            if key in screening.excluded_classes and screening.excluded_classes[key] not in found:
                found.append(screening.excluded_classes[key])
        if screening.allergy and screening.allergies:
            allergen = first_allergen(preparation.medication, screening.allergies)
            if allergen:
                found.append(Exclusion(screening.allergy.reason, f"{screening.allergy.text} ({allergen})"))
        preparation.exclusion = combined(found)
    if activity.preparations and not activity.usable_preparations:
        own = [p.exclusion for p in activity.preparations if p.exclusion]
        rule = screening.no_preparation
        # Home care *is* its preparation: it goes for the preparation's own reason. A delivery procedure
        # (phoresis, mesotherapy) goes because nothing is left for it to deliver, and why each went is kept.
        activity.exclusion = combined(own if activity.is_home_care or rule is None
                                      else [Exclusion(rule.reason, rule.text)] + own)
    if declined:  # the patient's choice first; an allergy or contraindication beside it still holds
        activity.exclusion = combined([declined] + ([activity.exclusion] if activity.exclusion else []))


def screen_order(protocol: Protocol, assessment: Assessment, allergies: list[Allergy], expressions: ExpressionCache,
                 definition: dict[str, Any], preparations: list[str]) -> PlannedActivity:
    """The catalog's screening rules applied to one order written outside a plan: a medication order is screened
    like home care (`definition` of kind MedicationRequest with its preparations), a procedure like a planned
    modality. The result carries the exclusions exactly as a plan would record them."""
    variables = {"resource": assessment.response, "context": assessment.response}
    screening = _screening(protocol, assessment, allergies, _Answers(expressions), variables)
    activity = PlannedActivity(key=definition.get("id", "order"), title=definition.get("title", ""),
                               definition=definition,
                               preparations=[Preparation(protocol.medications[r], r) for r in preparations
                                             if r in protocol.medications])
    _screen(activity, protocol, screening)
    return activity
