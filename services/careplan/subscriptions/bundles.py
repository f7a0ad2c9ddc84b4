"""What subscribers receive: notification Bundles and SubscriptionStatus Parameters (backport IG, R4).

A notification is a `history` Bundle (profile backport-subscription-notification-r4) whose
first entry is the SubscriptionStatus as Parameters (profile backport-subscription-status-r4):
subscription, topic, status, type (handshake | heartbeat | event-notification | query-status |
query-event), events-since-subscription-start and one notification-event per event
(event-number, timestamp, focus unless the payload is `empty`). With `id-only` each focus
is an entry with its fullUrl; with `full-resource` the entry carries the resource.
`$status` answers a `searchset` Bundle of the status alone.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.careplan.subscriptions.tables import Subscription
from services.fhir.store import instant, utcnow

IG = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
STATUS_PROFILE = IG + "backport-subscription-status-r4"
NOTIFICATION_PROFILE = IG + "backport-subscription-notification-r4"


@dataclass
class Event:
    """One event as a notification shows it."""

    number: int
    occurred: datetime
    focus_type: str | None
    focus_id: str | None
    focus_version: int | None
    interaction: str | None
    resource: dict[str, Any] | None = None
    """The focus itself, for full-resource payloads (None when it is no longer there)."""

    def reference(self, base: str) -> str:
        url = f"{base}/{self.focus_type}/{self.focus_id}"
        return f"{url}/_history/{self.focus_version}" if self.focus_version is not None else url


def status_parameters(row: Subscription, kind: str, events: list[Event], *, base: str, content: str,
                      status: str | None = None, error: str | None = None) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": f"{base}/Subscription/{row.id}"}},
        {"name": "topic", "valueCanonical": row.topic},
        {"name": "status", "valueCode": status or row.status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(row.events_since_start)},
    ]
    for found in events:
        part: list[dict[str, Any]] = [{"name": "event-number", "valueString": str(found.number)},
                                      {"name": "timestamp", "valueInstant": instant(found.occurred)}]
        if content != "empty" and found.focus_type:
            part.append({"name": "focus", "valueReference": {"reference": found.reference(base)}})
        parameters.append({"name": "notification-event", "part": part})
    if error or row.error:
        parameters.append({"name": "error", "valueCodeableConcept": {"text": error or row.error}})
    return {"resourceType": "Parameters", "id": str(uuid.uuid4()), "meta": {"profile": [STATUS_PROFILE]},
            "parameter": parameters}


def notification_bundle(row: Subscription, kind: str, events: list[Event], *, base: str, content: str,
                        status: str | None = None) -> dict[str, Any]:
    """The history Bundle posted to the endpoint (also the `$events` answer, kind query-event)."""
    entries: list[dict[str, Any]] = [{
        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
        "resource": status_parameters(row, kind, events, base=base, content=content, status=status),
        "request": {"method": "GET", "url": f"{base}/Subscription/{row.id}/$status"},
        "response": {"status": "200"},
    }]
    if content != "empty":
        for found in events:
            if not found.focus_type:
                continue
            created = found.interaction == "create"
            entry: dict[str, Any] = {"fullUrl": f"{base}/{found.focus_type}/{found.focus_id}"}
            if content == "full-resource" and found.resource is not None:
                entry["resource"] = found.resource
            entry["request"] = {"method": "POST" if created else "PUT",
                                "url": found.focus_type if created else f"{found.focus_type}/{found.focus_id}"}
            entry["response"] = {"status": "201" if created else "200"}
            entries.append(entry)
    return {"resourceType": "Bundle", "id": str(uuid.uuid4()),
            "meta": {"profile": [NOTIFICATION_PROFILE], "lastUpdated": instant(utcnow())},
            "type": "history", "timestamp": instant(utcnow()), "entry": entries}


def status_bundle(row: Subscription, *, base: str) -> dict[str, Any]:
    """`$status`: a searchset Bundle with the SubscriptionStatus."""
    parameters = status_parameters(row, "query-status", [], base=base, content=row.content)
    return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "searchset", "total": 1,
            "entry": [{"fullUrl": f"urn:uuid:{parameters['id']}", "resource": parameters,
                       "search": {"mode": "match"}}]}
