"""Stored CarePlans for delivery tests, written the way the care-plan service writes them.

`store_plan` goes through the real `PlanRepository.save` (assessment + plan + plan hooks in one
transaction, revocation of the plan a reassessment replaces), so the outbox row under test is the one
production code queues. `bulk_plans` writes many small plans in one transaction for the load tests.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from services.careplan.careplan_builder import PLAN_IDENTIFIER_SYSTEM, plan_identifier
from services.careplan.delivery.outbox import EnqueueHook
from services.careplan.generate import PlanHook, PlanRepository, PlanResult
from services.careplan.intake import Assessment, assessment_key, stored_response_id
from services.careplan.searchparams import SEARCH_PARAMS
from services.careplan.tables import CareplanResource, CareplanResourceVersion, CareplanSearchIndex
from services.fhir.store import ResourceStore, StoredResource

QUESTIONNAIRE = "https://fhir.cicatrix.org/Questionnaire/scar-assessment"
PROTOCOL = "https://fhir.cicatrix.org/PlanDefinition/atrophic-scar-protocol|0.1.0"
BODY_SITES = "https://fhir.cicatrix.org/CodeSystem/body-site"


def make_store() -> ResourceStore:
    return ResourceStore(CareplanResource, CareplanResourceVersion, CareplanSearchIndex, SEARCH_PARAMS)


def assessment(key: str, *, subject: str = "Patient/p1", site: str = "anterior-chest",
               author: str | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "identifier": {"system": "https://hospital.example.org/assessment", "value": key},
        "questionnaire": QUESTIONNAIRE,
        "status": "completed",
        "subject": {"reference": subject},
        "item": [{"linkId": "scar-age-months", "answer": [{"valueInteger": 30}]}],
    }
    if author:
        response["author"] = {"reference": author}
    return response


def careplan(identifier: str, *, subject: str = "Patient/p1", status: str = "draft",
             assessment_id: str | None = None, events: int = 6) -> dict[str, Any]:
    """A CarePlan shaped like careplan_builder's: contained Goal, scheduled activity, catalog product, narrative."""
    dates = [f"2026-03-{2 + 3 * i:02d}T09:00:00+01:00" for i in range(events)]
    plan: dict[str, Any] = {
        "resourceType": "CarePlan",
        "contained": [{"resourceType": "Goal", "id": "goal-smooth", "lifecycleStatus": "proposed",
                       "description": {"text": "Smooth the scar surface"}, "subject": {"reference": subject}}],
        "identifier": [{"system": PLAN_IDENTIFIER_SYSTEM, "value": identifier}],
        "instantiatesCanonical": [PROTOCOL],
        "status": status,
        "intent": "plan",
        "title": "Atrophic scar treatment: plan",
        "description": "Atrophic scar at the anterior chest, about 30 months old",
        "subject": {"reference": subject},
        "period": {"start": "2026-03-02", "end": "2027-09-02"},
        "created": "2026-02-20T10:00:00+00:00",
        "goal": [{"reference": "#goal-smooth"}],
        "activity": [{"detail": {
            "kind": "ServiceRequest",
            "code": {"coding": [{"system": "https://fhir.cicatrix.org/CodeSystem/scar-modality",
                                 "code": "therapeutic-dermabrasion"}]},
            "status": "scheduled",
            "scheduledTiming": {"event": dates, "repeat": {"count": len(dates), "frequency": 2, "period": 1,
                                                           "periodUnit": "wk"}},
            "productReference": {"reference": "Medication/mederma-gel", "display": "Mederma gel"},
            "description": "Therapeutic dermabrasion",
        }}],
        "note": [{"text": "Results on scars without a visible vascular pattern are subtle."}],
        "text": {"status": "generated",
                 "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p><b>Atrophic scar treatment</b></p></div>'},
    }
    if assessment_id:
        plan["supportingInfo"] = [{"reference": f"QuestionnaireResponse/{assessment_id}"}]
    return plan


def plan_result(key: str | None = None, *, subject: str = "Patient/p1", status: str = "draft",
                site: str | None = None, author: str | None = None,
                category: list[dict[str, Any]] | None = None) -> tuple[PlanResult, str]:
    """An assessment and its plan as planning returns them, and the plan's identifier."""
    key = key or uuid.uuid4().hex[:12]
    response = assessment(key, subject=subject, author=author)
    akey = assessment_key(response)
    assert akey is not None
    identifier = plan_identifier(akey, subject)
    plan = careplan(identifier, subject=subject, status=status, assessment_id=stored_response_id(subject, akey))
    if category:
        plan["category"] = category
    answers = {"body-site": [{"system": BODY_SITES, "code": site or f"site-{key}"}]}
    return PlanResult(plan, Assessment(response=response, subject=subject, answers=answers), None), identifier  # type: ignore[arg-type]


def store_plan(engine: Engine, key: str | None = None, *, subject: str = "Patient/p1", status: str = "draft",
               site: str | None = None, author: str | None = None,
               hooks: list[PlanHook] | None = None, category: list[dict[str, Any]] | None = None) -> StoredResource:
    """Store an assessment and its plan through PlanRepository.save; returns the stored CarePlan.

    `hooks` defaults to the outbox hook alone; pass an app's `ctx.extras["plan_hooks"]` to also poke its
    embedded dispatcher."""
    result, identifier = plan_result(key, subject=subject, status=status, site=site, author=author,
                                     category=category)
    repository = PlanRepository(make_store(), hooks if hooks is not None else [EnqueueHook()])
    with Session(engine, expire_on_commit=False) as session:
        stored, created = repository.save(session, result, careplan_id=identifier)
    assert created
    return stored


def bulk_plans(engine: Engine, count: int) -> list[str]:
    """`count` small plans (and their outbox rows) in one transaction; returns their identifiers."""
    store, hook = make_store(), EnqueueHook()
    identifiers = []
    with Session(engine, expire_on_commit=False) as session:
        for _ in range(count):
            identifier = str(uuid.uuid4())
            plan = careplan(identifier, events=2)
            plan.pop("text")
            stored = store.create(session, plan, resource_id=identifier)
            hook(session, stored, None)
            identifiers.append(identifier)
        session.commit()
    return identifiers
