"""Delivery state as FHIR Tasks: one Task per delivery (one CarePlan version on its way to the EHR).

    GET  /fhir/Task?focus=CarePlan/{id}[&status=...]   the plan's deliveries, oldest first
    GET  /fhir/Task/{id}                                one delivery
    POST /fhir/Task/{id}/$retry                         re-queue a failed delivery (409 otherwise)

A Task is rendered from its outbox row on each read (nothing else is stored), so it
always shows what the dispatcher last wrote:

    status          requested (queued) | in-progress (sending, or waiting for a retry) |
                    completed | failed | cancelled (a later version reached the EHR first)
    businessStatus  queued | sending | retry-scheduled | delivered | failed | superseded, with the
                    attempts made, the attempt budget, the next attempt time and the last error in its text
    statusReason    why it failed (the EHR's own diagnostics when it gave any)
    input           the CarePlan version delivered
    output          the EHR's resources (absolute URLs with their versions), the delivery shape, elements
                    the EHR dropped (read-back), and on failure the EHR's OperationOutcome (contained)
    restriction     repetitions = CAREPLAN_DELIVERY_MAX_ATTEMPTS, period.end = when retrying stops
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import Request
from sqlalchemy import and_, false, func, or_, select
from sqlmodel import col
from starlette.responses import Response

from services.careplan.delivery import claims
from services.careplan.delivery.outbox import (
    CANCELLED,
    COMPLETED,
    FAILED,
    NOTIFY_CHANNEL,
    PENDING,
    SENDING,
    Delivery,
)
from services.careplan.leases import notify
from services.fhir.bundles import ignored_parameter, page_size, rendered_searchset
from services.fhir.compartment import PatientCompartment
from services.fhir.conditional import none_match
from services.fhir.deps import ContextDep, SessionDep
from services.fhir.interaction_table import Entry, Permission
from services.fhir.outcome import BadRequest, Conflict, Issue, NotFound
from services.fhir.responses import FhirResponse, etag, http_date
from services.fhir.rest import fhir_base
from services.fhir.store import as_utc, instant

DELIVERY_CODES = "https://fhir.cicatrix.org/CodeSystem/careplan-delivery"
RETRY_DEFINITION = "https://fhir.cicatrix.org/OperationDefinition/Task-retry"
SEARCH_PARAMS = ("focus", "status", "_id", "_count")
MAX_COUNT = 200
"""Deliveries per search answer (a plan has one per version; paging is not needed at this size)."""

_TASK_STATUS = {COMPLETED: "completed", FAILED: "failed", CANCELLED: "cancelled", SENDING: "in-progress"}


def _status_clause(code: str) -> Any:
    """The outbox rows whose Task has status `code` (the inverse of `task_status`)."""
    if code == "requested":
        return and_(col(Delivery.state) == PENDING, col(Delivery.attempts) == 0)
    if code == "in-progress":
        return or_(col(Delivery.state) == SENDING, and_(col(Delivery.state) == PENDING, col(Delivery.attempts) > 0))
    state = {v: k for k, v in _TASK_STATUS.items() if k != SENDING}.get(code)
    return Delivery.state == state if state else false()


def _coding(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": DELIVERY_CODES, "code": code, "display": display}]}


def _when(moment: datetime | None) -> str | None:
    return instant(moment) if moment is not None else None


def task_status(delivery: Delivery) -> str:
    if delivery.state == PENDING:
        return "requested" if delivery.attempts == 0 else "in-progress"
    return _TASK_STATUS[delivery.state]


def business_status(delivery: Delivery, max_attempts: int) -> dict[str, Any]:
    tried = f"attempts: {delivery.attempts} of {max_attempts}"
    if delivery.state == PENDING and delivery.attempts == 0:
        concept = _coding("queued", "Queued")
        concept["text"] = f"queued; {tried}; next attempt at {_when(delivery.next_attempt_at)}"
    elif delivery.state == PENDING:
        concept = _coding("retry-scheduled", "Retry scheduled")
        concept["text"] = (f"{tried}; next attempt at {_when(delivery.next_attempt_at)}; "
                           f"last error: {delivery.last_error}")
    elif delivery.state == SENDING:
        concept = _coding("sending", "Sending")
        concept["text"] = f"attempt {delivery.attempts + 1} in progress; {tried} so far"
    elif delivery.state == COMPLETED:
        concept = _coding("delivered", "Delivered")
        dropped = delivery.dropped_elements()
        note = f"; the EHR dropped {len(dropped)} element(s)" if dropped else ""
        concept["text"] = f"delivered as {delivery.shape} in {delivery.attempts} attempt(s){note}"
    elif delivery.state == FAILED:
        concept = _coding("failed", "Failed")
        concept["text"] = f"{tried}; failed: {delivery.last_error}"
    else:
        concept = _coding("superseded", "Superseded")
        concept["text"] = delivery.last_error or "superseded"
    return concept


def task_resource(delivery: Delivery, *, ehr_base: str, max_attempts: int, max_age_end: datetime) -> dict[str, Any]:
    """The FHIR R4 Task for one outbox row."""
    plan = f"CarePlan/{delivery.careplan_id}"
    task: dict[str, Any] = {
        "resourceType": "Task",
        "id": delivery.id,
        "meta": {"versionId": str(delivery.row_version), "lastUpdated": instant(delivery.updated)},
    }
    outputs: list[dict[str, Any]] = []
    outcome = orjson.loads(delivery.outcome) if delivery.outcome and delivery.state == FAILED else None
    if outcome:
        task["contained"] = [{**outcome, "id": "ehr-outcome"}]
    task |= {
        "identifier": [{"system": "https://fhir.cicatrix.org/delivery-id", "value": delivery.id}],
        "status": task_status(delivery),
    }
    if delivery.state in (FAILED, CANCELLED) and delivery.last_error:
        task["statusReason"] = {"text": delivery.last_error}
    task |= {
        "businessStatus": business_status(delivery, max_attempts),
        "intent": "order",
        "code": _coding("deliver-careplan", "Deliver a CarePlan to the EHR"),
        "description": f"Deliver version {delivery.careplan_version} of {plan} to the EHR ({delivery.kind})",
        "focus": {"reference": plan},
    }
    if delivery.subject:
        task["for"] = {"reference": delivery.subject}
    period = {k: v for k, v in (("start", _when(delivery.first_attempt_at)),
                                ("end", _when(delivery.finished_at))) if v}
    if period:
        task["executionPeriod"] = period
    task |= {
        "authoredOn": instant(delivery.created),
        "lastModified": instant(delivery.updated),
        "restriction": {"repetitions": max_attempts, "period": {"end": instant(max_age_end)}},
        "input": [{"type": _coding("careplan-version", "CarePlan version"),
                   "valueReference": {"reference": f"{plan}/_history/{delivery.careplan_version}"}}],
    }
    for written in delivery.outputs():
        outputs.append({"type": _coding("ehr-resource", "Resource in the EHR"),
                        "valueReference": {"reference": f"{ehr_base}/{written}"}})
    if delivery.shape and delivery.state == COMPLETED:
        outputs.append({"type": _coding("delivery-shape", "Delivery shape"), "valueCode": delivery.shape})
    dropped = delivery.dropped_elements()
    if dropped:
        outputs.append({"type": _coding("read-back-dropped", "Elements the EHR did not keep"),
                        "valueString": "; ".join(dropped)[:10000]})
    if outcome:
        outputs.append({"type": _coding("ehr-outcome", "The EHR's OperationOutcome"),
                        "valueReference": {"reference": "#ehr-outcome"}})
    if outputs:
        task["output"] = outputs
    return task


def task_entries(compartment: PatientCompartment, *, poke: Any = None) -> list[Entry]:
    """The Task interactions; `compartment` keeps `patient/` tokens to their own Tasks, `poke()` wakes an
    in-process dispatcher after a `$retry`."""

    def render(delivery: Delivery, ctx: Any) -> dict[str, Any]:
        settings = ctx.settings
        return task_resource(delivery, ehr_base=settings.EHR_BASE_URL.rstrip("/"),
                             max_attempts=settings.DELIVERY_MAX_ATTEMPTS,
                             max_age_end=as_utc(delivery.window_start) + settings.DELIVERY_MAX_AGE)

    def headers(delivery: Delivery) -> dict[str, str]:
        return {"ETag": etag(delivery.row_version), "Last-Modified": http_date(as_utc(delivery.updated))}

    def search_tasks(request: Request, session: SessionDep, ctx: ContextDep) -> Response:
        """Deliveries, by the plan they deliver (`focus`), Task `status` or `_id`."""
        pairs = parse_qsl(request.url.query, keep_blank_values=True)
        stmt = select(Delivery)
        count = 50
        warnings: list[Issue] = []
        for name, value in pairs:
            if name == "focus":
                reference = value.split("/_history/")[0]
                plan_id = reference.rsplit("/", 1)[-1]
                if "/" in reference and not reference.split("/")[-2] == "CarePlan":
                    raise BadRequest("focus must reference a CarePlan", expression="focus")
                stmt = stmt.where(col(Delivery.careplan_id) == plan_id)
            elif name == "status":
                stmt = stmt.where(or_(false(), *[_status_clause(code.strip()) for code in value.split(",")]))
            elif name == "_id":
                stmt = stmt.where(col(Delivery.id).in_(value.split(",")))
            elif name == "_count":
                count = page_size(value, MAX_COUNT)
            elif name != "_format":
                warnings.append(ignored_parameter(name))
        total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
        rows = session.scalars(stmt.order_by(col(Delivery.created), col(Delivery.careplan_version)).limit(count)).all()
        bundle = rendered_searchset(fhir_base(request, ctx.settings.BASE_URL), "Task",
                                    [render(row, ctx) for row in rows], total=total,
                                    params=[(k, v) for k, v in pairs if k in SEARCH_PARAMS], warnings=warnings)
        return FhirResponse(bundle)

    def read_task(resource_id: str, request: Request, session: SessionDep, ctx: ContextDep) -> Response:
        """One delivery's Task (304 when If-None-Match names its version)."""
        delivery = session.get(Delivery, resource_id)
        if delivery is None:
            raise NotFound(f"Task/{resource_id} is not known")
        task = render(delivery, ctx)
        compartment.check_read(request, task)  # before a 304 too: it would confirm the Task and its version
        if none_match(request.headers.get("if-none-match"), etag(delivery.row_version)):
            return Response(status_code=304, headers=headers(delivery))
        return FhirResponse(task, headers=headers(delivery))

    def retry_task(resource_id: str, session: SessionDep, ctx: ContextDep) -> Response:
        """Re-queue a failed delivery with a fresh attempt budget (after the cause was fixed)."""
        delivery = session.get(Delivery, resource_id, with_for_update=session.get_bind().dialect.name == "postgresql")
        if delivery is None:
            raise NotFound(f"Task/{resource_id} is not known")
        if delivery.state != FAILED:
            raise Conflict(f"Task/{resource_id} is {task_status(delivery)}; only a failed delivery can be retried",
                           code="business-rule")
        claims.requeue(session, delivery)
        notify(session, NOTIFY_CHANNEL)
        session.commit()
        if poke is not None:
            poke()
        return FhirResponse(render(delivery, ctx), headers=headers(delivery))

    return [Entry("read", read_task, ("Task",), tag="delivery"),
            Entry("search-type", search_tasks, ("Task",), tag="delivery"),
            Entry("$retry", retry_task, ("Task",), method="POST", instance=True, permission=Permission("u"),
                  definition=RETRY_DEFINITION, documentation="Re-queue a failed delivery", tag="delivery")]
