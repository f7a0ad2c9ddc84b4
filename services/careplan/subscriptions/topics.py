"""The care-plan service's SubscriptionTopics, and which changes are events of which topic.

R4 has no SubscriptionTopic resource: the Subscriptions R5 Backport IG publishes a
topic as a `Basic` (code `fhir-types#SubscriptionTopic`) carrying the R5 elements as
cross-version extensions (`http://hl7.org/fhir/5.0/StructureDefinition/extension-
SubscriptionTopic.*`). Four topics, each filterable by `patient` and `category`:

    careplan-created           a CarePlan is stored for the first time         focus CarePlan
    careplan-status-changed    a CarePlan's status changes (draft -> active, ...) focus CarePlan
    careplan-delivery-failed   a delivery to the EHR failed for good           focus Task
    careplan-delivery-completed  a delivery to the EHR completed               focus Task

For the delivery topics `category` is the delivered plan's category (a Task has none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

TOPIC_BASE = "https://fhir.cicatrix.org/SubscriptionTopic/"
XVER = "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic."
TOPIC_VERSION = "1.0.0"
TOPIC_DATE = "2026-12-04"


@dataclass(frozen=True)
class Topic:
    id: str
    title: str
    description: str
    resource: str
    """The focus resource type (CarePlan or Task)."""
    interactions: tuple[str, ...]
    previous: str | None
    current: str | None
    fhirpath: str

    @property
    def url(self) -> str:
        return TOPIC_BASE + self.id


PLAN_CREATED = Topic(
    "careplan-created", "CarePlan created",
    "A care plan was generated and stored (any status). Focus: the CarePlan.",
    "CarePlan", ("create",), None, None, "%previous.empty() and %current.exists()")
PLAN_STATUS_CHANGED = Topic(
    "careplan-status-changed", "CarePlan status changed",
    "A stored care plan changed status: approved (draft to active), revoked (withdrawn, or replaced by a "
    "reassessment), completed, and any other status change. Focus: the new CarePlan version.",
    "CarePlan", ("update",), None, None, "%previous.exists() and %previous.status != %current.status")
DELIVERY_FAILED = Topic(
    "careplan-delivery-failed", "CarePlan delivery to the EHR failed",
    "Delivering a CarePlan version to the EHR failed for good (rejected, or retries exhausted); the Task "
    "says why and `Task/{id}/$retry` re-queues it. Focus: the delivery Task.",
    "Task", ("update",), "status:not=failed", "status=failed", "%current.status = 'failed'")
DELIVERY_COMPLETED = Topic(
    "careplan-delivery-completed", "CarePlan delivered to the EHR",
    "A CarePlan version reached the EHR; the Task lists the EHR's resources. Focus: the delivery Task.",
    "Task", ("update",), "status:not=completed", "status=completed", "%current.status = 'completed'")

TOPICS = (PLAN_CREATED, PLAN_STATUS_CHANGED, DELIVERY_FAILED, DELIVERY_COMPLETED)
BY_URL = {topic.url: topic for topic in TOPICS}
BY_ID = {topic.id: topic for topic in TOPICS}
FILTERS = {
    "patient": "The patient the plan is for: `patient=Patient/123`.",
    "category": "The plan's category, as a token: `category=system|code` or `category=code`.",
}


def plan_topics(current: dict[str, Any], previous: dict[str, Any] | None) -> list[Topic]:
    """The plan topics a CarePlan write is an event of."""
    if previous is None:
        return [PLAN_CREATED]
    if previous.get("status") != current.get("status"):
        return [PLAN_STATUS_CHANGED]
    return []


def delivery_topic(state: str) -> Topic | None:
    return {"completed": DELIVERY_COMPLETED, "failed": DELIVERY_FAILED}.get(state)


def category_tokens(plan: dict[str, Any]) -> list[str]:
    """Every token a `category` filter may name to match this plan: `system|code` and `code` of each coding."""
    tokens: list[str] = []
    for concept in plan.get("category") or []:
        for coding in (concept or {}).get("coding") or []:
            code = coding.get("code")
            if isinstance(code, str):
                tokens += [f"{coding.get('system') or ''}|{code}", code]
    return tokens


class FilterError(ValueError):
    """A filter criteria string the topic cannot apply."""


def parse_filter(topic: Topic, criteria: str) -> dict[str, str]:
    """`CarePlan?patient=Patient/1&category=...` -> {"patient": "Patient/1", "category": "..."}.

    >>> parse_filter(PLAN_CREATED, "CarePlan?patient=123&category=scar-therapy-plan")
    {'patient': 'Patient/123', 'category': 'scar-therapy-plan'}
    """
    resource, _, query = criteria.partition("?")
    if resource != topic.resource or not query:
        raise FilterError(f"filter criteria for this topic read `{topic.resource}?name=value`, "
                          f"with name one of {', '.join(FILTERS)}")
    found: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in FILTERS:
            raise FilterError(f"the topic cannot filter by `{name}` (canFilterBy: {', '.join(FILTERS)})")
        if not value or name in found:
            raise FilterError(f"`{name}` needs one non-empty value")
        if name == "patient":
            value = value if value.startswith("Patient/") else f"Patient/{value}"
            if value.count("/") != 1 or not value.split("/")[1]:
                raise FilterError("`patient` is a Patient reference: Patient/<id>")
        found[name] = value[:256]
    return found


def _ext(name: str, **value: Any) -> dict[str, Any]:
    return {"url": XVER + name, **value}


def topic_resource(topic: Topic) -> dict[str, Any]:
    """The topic as the backport IG publishes it in R4: a Basic with the SubscriptionTopic extensions."""
    trigger: list[dict[str, Any]] = [
        {"url": "description", "valueMarkdown": topic.description},
        {"url": "resource", "valueUri": f"http://hl7.org/fhir/StructureDefinition/{topic.resource}"},
        *({"url": "supportedInteraction", "valueCode": code} for code in topic.interactions),
    ]
    if topic.current:
        query = [{"url": "previous", "valueString": topic.previous}, {"url": "current", "valueString": topic.current},
                 {"url": "requireBoth", "valueBoolean": True}]
        trigger.append({"url": "queryCriteria", "extension": query})
    trigger.append({"url": "fhirPathCriteria", "valueString": topic.fhirpath})
    extensions = [
        _ext("url", valueUri=topic.url),
        _ext("version", valueString=TOPIC_VERSION),
        _ext("name", valueString="".join(word.capitalize() for word in topic.id.split("-"))),
        _ext("title", valueString=topic.title),
        _ext("status", valueCode="active"),
        _ext("date", valueDateTime=TOPIC_DATE),
        _ext("publisher", valueString="Cicatrix"),
        _ext("description", valueMarkdown=topic.description),
        _ext("resourceTrigger", extension=trigger),
        *(_ext("canFilterBy", extension=[{"url": "description", "valueMarkdown": text},
                                         {"url": "resource", "valueUri": topic.resource},
                                         {"url": "filterParameter", "valueString": name}])
          for name, text in FILTERS.items()),
        _ext("notificationShape", extension=[{"url": "resource", "valueUri": topic.resource}]),
    ]
    return {
        "resourceType": "Basic",
        "id": topic.id,
        "meta": {"versionId": "1", "lastUpdated": f"{TOPIC_DATE}T00:00:00.000Z"},
        "extension": extensions,
        "code": {"coding": [{"system": "http://hl7.org/fhir/fhir-types", "code": "SubscriptionTopic"}]},
    }
