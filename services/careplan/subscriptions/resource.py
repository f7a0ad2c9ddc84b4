"""R4 Subscriptions as the backport IG profiles them (`backport-subscription`): what a client may ask for.

    criteria            a topic canonical (see topics.py); `_criteria` may carry
                        backport-filter-criteria extensions (`CarePlan?patient=...&category=...`)
    channel.type        rest-hook
    channel.endpoint    https (http only to a loopback address in development), under one of the
                        CAREPLAN_SUBSCRIPTION_ENDPOINTS prefixes, without credentials in the URL
    channel.payload     application/fhir+json; `_payload` backport-payload-content: empty | id-only |
                        full-resource (the default is id-only)
    channel.header      "Name: value" lines sent with every notification (a bearer token, say);
                        never shown on reads
    channel extensions  backport-heartbeat-period, backport-timeout, backport-max-count

Access: a `patient/` scope limits the subscription to the token's patient (a `patient`
filter for another patient is refused); `full-resource` needs read access to what the
topic carries (CarePlan or Task).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from services.careplan.subscriptions.tables import Subscription
from services.careplan.subscriptions.topics import BY_URL, FilterError, Topic, parse_filter
from services.fhir.access import Access
from services.fhir.auth import is_loopback
from services.fhir.outcome import BadRequest, Forbidden, Issue, Unprocessable
from services.fhir.store import instant
from services.fhir.validation import r4_issues

IG = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
PROFILE = IG + "backport-subscription"
FILTER_CRITERIA = IG + "backport-filter-criteria"
PAYLOAD_CONTENT = IG + "backport-payload-content"
HEARTBEAT_PERIOD = IG + "backport-heartbeat-period"
TIMEOUT = IG + "backport-timeout"
MAX_COUNT = IG + "backport-max-count"
CONTENTS = ("empty", "id-only", "full-resource")
FHIR_JSON = "application/fhir+json"
HIDDEN = "(hidden)"
REFUSED_HEADERS = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection",
                             "cookie", "te", "upgrade", "expect", "proxy-authorization"})


@dataclass
class Requested:
    """What a valid Subscription asks for."""

    topic: Topic
    endpoint: str
    headers: list[str]
    content: str
    heartbeat: int | None
    timeout: float | None
    max_count: int | None
    filters: dict[str, str]
    end: datetime | None
    resource: dict[str, Any]


def _extension(element: Any, url: str) -> list[dict[str, Any]]:
    if not isinstance(element, dict):
        return []
    return [e for e in element.get("extension") or [] if isinstance(e, dict) and e.get("url") == url]


def _one_value(element: Any, url: str, key: str, where: str) -> Any:
    found = _extension(element, url)
    if len(found) > 1:
        raise Unprocessable(f"at most one {url.rsplit('/', 1)[-1]} extension", expression=where)
    return found[0].get(key) if found else None


def check_endpoint(endpoint: Any, *, prefixes: list[str], loopback_http: bool) -> str:
    """The endpoint, if it is one we may call: https (or loopback http in development), allow-listed."""
    where = "Subscription.channel.endpoint"
    if not isinstance(endpoint, str) or not endpoint:
        raise Unprocessable("a rest-hook subscription needs channel.endpoint", expression=where, code="required")
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        raise Unprocessable("the endpoint is not a valid URL", expression=where) from None
    if parts.username or parts.password or "@" in parts.netloc:
        raise Unprocessable("the endpoint must not carry credentials; use channel.header", expression=where)
    if parts.fragment or not parts.hostname:
        raise Unprocessable("the endpoint must be an absolute URL without a fragment", expression=where)
    if parts.scheme == "http":
        if not (loopback_http and _is_loopback_address(parts.hostname)):
            raise Unprocessable("endpoints must use https (plain http is only accepted to a loopback address "
                                "in development)", expression=where, code="security")
    elif parts.scheme != "https":
        raise Unprocessable("endpoints must use https", expression=where, code="security")
    if not any(_under(parts, prefix) for prefix in prefixes):
        raise Unprocessable("the endpoint is not under any URL prefix this service may notify "
                            "(CAREPLAN_SUBSCRIPTION_ENDPOINTS)", expression=where, code="security")
    return endpoint


def _is_loopback_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return is_loopback(host)


def _under(parts: Any, prefix: str) -> bool:
    """Same scheme, host and port, and the path at or below the prefix's path (by whole segments)."""
    allowed = urlsplit(prefix)
    try:
        allowed.port  # noqa: B018
    except ValueError:
        return False
    if (parts.scheme, parts.hostname, parts.port) != (allowed.scheme, allowed.hostname, allowed.port):
        return False
    base = allowed.path or "/"
    path = parts.path or "/"
    return path == base or path.startswith(base if base.endswith("/") else base + "/")


def _headers(channel: dict[str, Any], limit: int) -> list[str]:
    lines = channel.get("header") or []
    where = "Subscription.channel.header"
    if len(lines) > limit:
        raise Unprocessable(f"at most {limit} channel.header lines (CAREPLAN_SUBSCRIPTION_MAX_HEADERS)",
                            expression=where)
    for index, line in enumerate(lines):
        name, colon, value = line.partition(":")
        if (not colon or not name.strip() or not value.strip() or len(line) > 1024 or "\r" in line
                or "\n" in line or not name.strip().replace("-", "").isalnum()):
            raise Unprocessable('each channel.header is one "Name: value" line', expression=f"{where}[{index}]")
        if name.strip().lower() in REFUSED_HEADERS:
            raise Unprocessable(f"the header {name.strip()} is set by the service", expression=f"{where}[{index}]")
    return list(lines)


def parse_subscription(resource: dict[str, Any], settings: Any, access: Access | None) -> Requested:
    """Check a submitted Subscription: 400 when it is not valid R4, 422 when we cannot honour it, 403 for access."""
    issues = r4_issues(resource)
    if issues:
        raise BadRequest(issues[0].diagnostics, issues=issues)
    criteria = resource.get("criteria")
    topic = BY_URL.get(criteria) if isinstance(criteria, str) else None
    if topic is None:
        raise Unprocessable("criteria must be the canonical URL of one of this service's topics "
                            f"({', '.join(sorted(BY_URL))})", expression="Subscription.criteria", code="not-supported")
    filters: dict[str, str] = {}
    for index, found in enumerate(_extension(resource.get("_criteria"), FILTER_CRITERIA)):
        try:
            parsed = parse_filter(topic, str(found.get("valueString") or ""))
        except FilterError as error:
            raise Unprocessable(str(error), expression=f"Subscription.criteria.extension[{index}]") from None
        clash = [name for name in parsed if name in filters and filters[name] != parsed[name]]
        if clash:
            raise Unprocessable(f"`{clash[0]}` is filtered twice", expression="Subscription.criteria")
        filters |= parsed
    channel = resource.get("channel") or {}
    if channel.get("type") != "rest-hook":
        raise Unprocessable("only channel.type rest-hook is supported", expression="Subscription.channel.type",
                            code="not-supported")
    if channel.get("payload", FHIR_JSON) != FHIR_JSON:
        raise Unprocessable(f"channel.payload is {FHIR_JSON}", expression="Subscription.channel.payload",
                            code="not-supported")
    content = _one_value(channel.get("_payload"), PAYLOAD_CONTENT, "valueCode", "Subscription.channel.payload")
    content = content or "id-only"
    if content not in CONTENTS:
        raise Unprocessable("payload content is empty, id-only or full-resource",
                            expression="Subscription.channel.payload")
    heartbeat = _one_value(channel, HEARTBEAT_PERIOD, "valueUnsignedInt", "Subscription.channel")
    if heartbeat is not None and heartbeat < settings.SUBSCRIPTION_HEARTBEAT_MIN_SECONDS:
        raise Unprocessable(f"the heartbeat period is at least {settings.SUBSCRIPTION_HEARTBEAT_MIN_SECONDS} s",
                            expression="Subscription.channel.extension")
    timeout = _one_value(channel, TIMEOUT, "valueUnsignedInt", "Subscription.channel")
    if timeout is not None and not 1 <= timeout <= settings.SUBSCRIPTION_TIMEOUT_MAX_SECONDS:
        raise Unprocessable(f"the timeout is 1 to {settings.SUBSCRIPTION_TIMEOUT_MAX_SECONDS:g} s",
                            expression="Subscription.channel.extension")
    max_count = _one_value(channel, MAX_COUNT, "valuePositiveInt", "Subscription.channel")
    endpoint = check_endpoint(channel.get("endpoint"), prefixes=settings.subscription_endpoints(),
                              loopback_http=settings.loopback_http())
    headers = _headers(channel, settings.SUBSCRIPTION_MAX_HEADERS)
    filters = _limit_to_patient(filters, access)
    if content == "full-resource":
        check_can_read(access, topic.resource)
    end = _end(resource.get("end"))
    return Requested(topic, endpoint, headers, content, heartbeat, float(timeout) if timeout else None, max_count,
                     filters, end, _with_filters(resource, topic, filters))


def _with_filters(resource: dict[str, Any], topic: Topic, filters: dict[str, str]) -> dict[str, Any]:
    """The resource as stored: its filters as one backport-filter-criteria, as applied (a patient/ scope's included)."""
    out = {k: v for k, v in resource.items() if k != "_criteria"}
    others = [e for e in (resource.get("_criteria") or {}).get("extension") or [] if e.get("url") != FILTER_CRITERIA]
    if filters:
        query = "&".join(f"{name}={value}" for name, value in filters.items())
        others.append({"url": FILTER_CRITERIA, "valueString": f"{topic.resource}?{query}"})
    if others:
        out["_criteria"] = {**{k: v for k, v in (resource.get("_criteria") or {}).items() if k != "extension"},
                            "extension": others}
    return out


def subscription_patients(resource: Any) -> set[str]:
    """The patients a Subscription is limited to (its `patient` filter): its place in the patient compartment."""
    found = set()
    for extension in _extension(resource.get("_criteria"), FILTER_CRITERIA):
        criteria = resource.get("criteria")
        topic = BY_URL.get(criteria) if isinstance(criteria, str) else None
        try:
            patient = parse_filter(topic, str(extension.get("valueString") or "")).get("patient") if topic else None
        except FilterError:
            patient = None
        if patient:
            found.add(patient)
    return found


def _end(value: Any) -> datetime | None:
    """Subscription.end as a moment (an instant: R4 allows partial dates there, which cannot end anything precisely)."""
    if value is None:
        return None
    try:
        end = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        end = None
    if end is None or end.tzinfo is None:
        raise Unprocessable("end is a full date-time with a time zone", expression="Subscription.end")
    return end


def _limit_to_patient(filters: dict[str, str], access: Access | None) -> dict[str, str]:
    if access is None or access.patient is None:
        return filters
    own = f"Patient/{access.patient}"
    if filters.get("patient", own) != own:
        raise Forbidden("a patient/ scope only subscribes to its own patient's events")
    return filters | {"patient": own}


def check_can_read(access: Access | None, resource_type: str) -> None:
    if access is None or not access.principal.authenticated:
        return
    if not access.principal.grants.contexts(resource_type, "r"):
        raise Forbidden(f"a full-resource payload carries {resource_type} resources: it needs the scope "
                        f"system/{resource_type}.r (or its user/ or patient/ form)",
                        headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", '
                                                     f'scope="system/{resource_type}.r"'})


def render(row: Subscription) -> dict[str, Any]:
    """The Subscription as stored, with the server's status, error and version; header values hidden."""
    resource = orjson.loads(row.resource)
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    out: dict[str, Any] = {"resourceType": "Subscription", "id": row.id,
                           "meta": meta | {"versionId": str(row.row_version), "lastUpdated": instant(row.updated)}}
    out |= {k: v for k, v in resource.items() if k not in ("resourceType", "id", "meta", "status", "error")}
    out["status"] = row.status
    if row.error:
        out["error"] = row.error
    channel = dict(out.get("channel") or {})
    if channel.get("header"):
        channel["header"] = [f"{line.partition(':')[0].strip()}: {HIDDEN}" for line in channel["header"]]
    out["channel"] = channel
    # R4 element order: status, contact, end, reason, criteria, error, channel
    order = ["resourceType", "id", "meta", "implicitRules", "language", "text", "contained", "extension",
             "modifierExtension", "status", "contact", "end", "reason", "criteria", "_criteria", "error", "channel"]
    return {key: out[key] for key in sorted(out, key=lambda k: order.index(k) if k in order else len(order))}


def patient_issue(row: Subscription, access: Access | None) -> Issue | None:
    """None when the caller may see this subscription (patient/ scopes see only their patient's)."""
    if access is None or access.patient is None or row.owner_patient == access.patient:
        return None
    return Issue(code="forbidden", diagnostics="outside the patient compartment of this access token")
