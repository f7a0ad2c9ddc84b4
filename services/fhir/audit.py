"""The audit trail: one R4 AuditEvent per access to patient data, or no answer at all.

`AuditMiddleware` wraps the FHIR routes of a service that holds patient data. It
holds each response back until the access is recorded: who (the token's subject and
client, and the caller's address), what (the resources the URL names and the
response returns, and the patients they belong to), when, how (the RESTful
interaction, C/R/U/D/E) and with what outcome (0/4/8/12). If the AuditEvent cannot
be stored the client gets a 503 instead of the data. A write (`$generate`,
`$retry`) has committed by then and stands; `$generate` is idempotent, so the
client's retry returns the same plan and is recorded. Denials (403) are recorded too;
requests without a verifiable token (401) are only logged, so that anonymous
traffic cannot fill the audit table.

An event names at most one patient. A request that touched several patients' data
(a search returning two patients' plans, say) is recorded as one event per patient,
each naming that patient and that patient's resources only, as IHE Basic Audit Log
Patterns recommend: each patient's accesses can then be listed, and shown to a
`patient/` token, without disclosing anyone else's. Resources that name no patient
(a 404's URL) appear in every one of the request's events. What a request looked at
but did not return (a 304, or a 403 for a resource outside the token's compartment)
is recorded with its patient too: the compartment checks note it in the request
scope (`services.fhir.compartment.touched`).

AuditEvents hold references and codes only: no names, no answers, no search
values (a query string may carry an MRN), no error diagnostics. Reads of the audit
trail itself are not audited (they would audit themselves without end).

The middleware also marks every patient-data response `Cache-Control: no-store`
and, for requests limited to one patient, checks that every resource the response
carries belongs to that patient (a backstop for routes outside the generic
interactions, such as the delivery Tasks).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import orjson
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.fhir.access import ACCESS_SCOPE_KEY, Access, Principal
from services.fhir.auth import PRINCIPAL_SCOPE_KEY
from services.fhir.compartment import TOUCHED_SCOPE_KEY, Checked, PatientCompartment, resource_of, touched
from services.fhir.loopdb import LoopDatabase, on_loop
from services.fhir.outcome import FhirError, ServiceUnavailable
from services.fhir.routes import FHIR_PREFIX, FhirRequest, InvalidId, fhir_request
from services.fhir.store import ResourceStore, StoredResource, instant, utcnow

log = logging.getLogger("cicatrix.audit")

AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
OPERATION_CODES = "https://fhir.cicatrix.org/CodeSystem/fhir-operation"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
SERVICE_IDS = "https://fhir.cicatrix.org/sid/service"
ANONYMOUS_SYSTEM = "https://fhir.cicatrix.org/sid/principal"

ACTIONS = {"create": "C", "read": "R", "vread": "R", "history-instance": "R", "history-type": "R",
           "search-type": "R", "update": "U", "patch": "U", "delete": "D"}
NOT_AUDITED = frozenset({"capabilities"})
NO_STORE = (b"cache-control", b"no-store")


@dataclass(frozen=True)
class Outcome:
    status: int
    crashed: bool = False

    @property
    def code(self) -> str:
        """0 success, 4 minor failure (the client's), 8 serious failure (ours), 12 major (the request crashed)."""
        if self.crashed:
            return "12"
        return "0" if self.status < 400 else "4" if self.status < 500 else "8"


class AuditTrail:
    """Builds AuditEvents and stores them in the service's own resource store."""

    def __init__(self, store: ResourceStore, *, service: str, compartment: PatientCompartment | None = None,
                 not_audited_types: frozenset[str] = frozenset({"AuditEvent"})) -> None:
        self.store = store
        self.service = service
        self.compartment = compartment
        self.not_audited_types = not_audited_types

    def audited(self, request: FhirRequest | None) -> bool:
        return (request is not None and request.interaction not in NOT_AUDITED
                and request.resource_type not in self.not_audited_types)

    def event(self, request: FhirRequest, principal: Principal, outcome: Outcome, entities: list[str],
              client_host: str | None) -> dict[str, Any]:
        """The AuditEvent for one request (R4; FHIR-REFERENCE §1.10)."""
        subtype = [{"system": RESTFUL_INTERACTION, "code": request.interaction}]
        if request.operation:
            subtype.append({"system": OPERATION_CODES, "code": request.operation, "display": f"${request.operation}"})
        return self.recorded_event(
            type={"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"}, subtype=subtype,
            action=ACTIONS.get(request.interaction, "E"), principal=principal, client_host=client_host,
            outcome=outcome.code,
            outcome_desc=f"HTTP {outcome.status}" + (" (unhandled error)" if outcome.crashed else ""),
            entities=[_entity(reference) for reference in entities])

    def recorded_event(self, *, type: dict[str, Any], subtype: list[dict[str, Any]],  # noqa: A002 - FHIR name
                       action: str, principal: Principal, client_host: str | None, outcome: str,
                       outcome_desc: str, entities: list[dict[str, Any]]) -> dict[str, Any]:
        """An AuditEvent of this service, recorded now, with the caller as agent (R4; FHIR-REFERENCE §1.10)."""
        return {
            "resourceType": "AuditEvent",
            "type": type,
            "subtype": subtype,
            "action": action,
            "recorded": instant(utcnow()),
            "outcome": outcome,
            "outcomeDesc": outcome_desc,
            "agent": _agents(principal, client_host),
            "source": {"site": "cicatrix",
                       "observer": {"identifier": {"system": SERVICE_IDS, "value": self.service},
                                    "display": f"Cicatrix {self.service} service"},
                       "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}]},
            **({"entity": entities} if entities else {}),
        }

    def entity_groups(self, request: FhirRequest, returned: Sequence[Mapping[str, Any]],
                      looked_at: list[Checked] | None = None) -> list[list[str]]:
        """The references the request touched, one group (one AuditEvent) per patient they name.

        From the URL's resource, the resources returned (and, for a write, the assessment it read), and what the
        compartment checks looked at without returning it. Each group holds one patient, that patient's
        resources and the references that belong to no patient; a request that names no patient is one group."""
        shared: dict[str, None] = {}
        if request.target:
            shared[request.target] = None
        by_patient: dict[str, dict[str, None]] = {}
        seen = {_reference(r) for r in returned}
        unreturned = [resource_of(item) for item in looked_at or () if _reference(item) not in seen]
        for resource in [*returned, *unreturned]:
            references = dict.fromkeys(ref for ref in [_reference(resource)] if ref)
            if request.interaction in ("create", "operation"):
                references.update(dict.fromkeys(info["reference"] for info in resource.get("supportingInfo") or []
                                                if isinstance(info, dict) and isinstance(info.get("reference"), str)))
            patients = sorted(self.compartment.patients(resource)) if self.compartment is not None else []
            for patient in patients:
                by_patient.setdefault(patient, {}).update(references)
            if not patients:
                shared.update(references)
        owned = {ref for refs in by_patient.values() for ref in refs}
        shared = {ref: None for ref in shared if ref not in owned}
        if not by_patient:
            return [list(shared)]
        return [list(shared) + [ref for ref in refs if ref not in shared] + [patient]
                for patient, refs in by_patient.items()]

    def refused_target(self, session_factory: Callable[[], Session], request: FhirRequest) -> list[Checked]:
        """The stored resource a refused request named (a token without the scope for it), so that the refusal
        is recorded with its patient; nothing when it names none, or none this trail's compartment holds."""
        compartment = self.compartment
        if compartment is None or request.resource_type not in compartment.types or request.resource_id is None:
            return []
        with session_factory() as session:
            try:
                return [self.store.read(session, request.resource_type, request.resource_id)]
            except FhirError:  # unknown, deleted or not stored here (a delivery Task): the URL is all there is
                return []

    async def record(self, sessions: Callable[[], Session], events: list[dict[str, Any]],
                     loop_db: LoopDatabase | None = None) -> None:
        """Store events in one transaction of their own (the audited requests' may already be gone): on
        PostgreSQL one statement on the event loop (`services.fhir.loopdb`), unless a write listener follows
        AuditEvents; elsewhere a session in a worker thread."""
        if on_loop(loop_db) and not self.store.followed("AuditEvent"):
            await self.store.create_on_loop(loop_db, events)
        else:
            await run_in_threadpool(self._record_in_session, sessions, events)

    def _record_in_session(self, sessions: Callable[[], Session], events: list[dict[str, Any]]) -> None:
        with sessions() as session:
            self.store.create_many(session, events)
            session.commit()


class GroupCommit:
    """Writes the AuditEvents of concurrent requests in one transaction, each request waiting for its own.

    A commit per request made the audit trail the costliest part of a care-plan read. Here the first event
    starts a writer; events that arrive while it commits wait for the next batch, so an idle service adds
    no delay and a busy one commits once per batch instead of once per request. A request is answered only
    after the batch holding its event committed; if the batch fails, every request in it fails."""

    MAX_BATCH = 32
    """Events per transaction. On PostgreSQL a batch's rows are built on the event loop (about 45 µs of CPU
    an event), so a batch holds it for about 1.5 ms at most; more concurrent events wait for the next."""

    def __init__(self, trail: AuditTrail, sessions: Callable[[], Session], loop_db: LoopDatabase | None = None) -> None:
        self.trail = trail
        self.sessions = sessions
        self.loop_db = loop_db
        self._pending: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, event: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((event, done))
        if self._writer is None or self._writer.done() or self._writer.get_loop() is not loop:
            self._writer = loop.create_task(self._write())
        await done  # a request cancelled while waiting drops only its own future; the batch goes on

    async def _write(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.MAX_BATCH], self._pending[self.MAX_BATCH:]
            try:
                await self.trail.record(self.sessions, [event for event, _ in batch], self.loop_db)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request, which answers 503
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)


class AuditMiddleware:
    def __init__(self, app: ASGIApp, *, trail: AuditTrail, sessions: Callable[[], Session],
                 loop_db: LoopDatabase | None = None) -> None:
        self.app = app
        self.trail = trail
        self.commits = GroupCommit(trail, sessions, loop_db)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == FHIR_PREFIX or path.startswith(FHIR_PREFIX + "/")) \
                or path == f"{FHIR_PREFIX}/metadata":
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        scope[TOUCHED_SCOPE_KEY] = []

        async def hold(message: Message) -> None:
            messages.append(message)

        error: FhirError | None = None
        try:
            await self.app(scope, receive, hold)
        except FhirError as exc:
            error, messages = exc, []
        except Exception:
            await self._record(scope, Outcome(500, crashed=True), _Answer(b"", touched(scope)), swallow=True)
            raise
        answer = _Answer(_body(messages), touched(scope))
        if error is None and messages:
            error = self._outside_compartment(scope, answer)
        outcome = Outcome(error.status if error else messages[0]["status"] if messages else 500)
        await self._record(scope, outcome, answer if error is None else answer.withheld())
        if error is not None:
            error.headers.setdefault("Cache-Control", "no-store")
            raise error
        for message in messages:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), NO_STORE]
            await send(message)

    def _outside_compartment(self, scope: Scope, answer: _Answer) -> FhirError | None:
        access = scope.get(ACCESS_SCOPE_KEY)
        compartment = self.trail.compartment
        if not isinstance(access, Access) or access.patient is None or compartment is None:
            return None
        try:
            for resource in answer.resources:
                compartment.check_resource(access, resource)
        except FhirError as exc:
            return exc
        return None

    async def _record(self, scope: Scope, outcome: Outcome, answer: _Answer, *, swallow: bool = False) -> None:
        try:
            request = fhir_request(scope)
        except InvalidId:
            request = None
        principal = _principal(scope)
        if principal is None or request is None or not self.trail.audited(request):
            return
        try:
            looked_at = answer.looked_at
            if outcome.status == 403 and not looked_at:
                looked_at = await run_in_threadpool(self.trail.refused_target, self.commits.sessions, request)
            client = scope.get("client")
            events = [self.trail.event(request, principal, outcome, group, client[0] if client else None)
                      for group in self.trail.entity_groups(request, answer.resources, looked_at)]
            await asyncio.gather(*(self.commits.record(event) for event in events))
        except Exception as exc:  # noqa: BLE001 - whatever broke, the access must not go unrecorded silently
            log.error("audit event could not be recorded",
                      extra={"interaction": request.interaction, "resource_type": request.resource_type,
                             "status": outcome.status, "error": type(exc).__name__})
            if swallow:
                return
            raise ServiceUnavailable("The request could not be recorded in the audit trail, so its result is "
                                     "withheld (a change it made stands); try again shortly") from None


def _principal(scope: Scope) -> Principal | None:
    access = scope.get(ACCESS_SCOPE_KEY)
    if isinstance(access, Access):
        return access.principal
    principal = scope.get(PRINCIPAL_SCOPE_KEY)
    return principal if isinstance(principal, Principal) else None


def _body(messages: list[Message]) -> bytes:
    return b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")


class _Answer:
    """What a response carries, parsed at most once for all of the request's checks and audit events.

    A read answers with a stored resource's very bytes: that resource's own parse (which the compartment check
    may already have made) stands for the body's."""

    def __init__(self, body: bytes, looked_at: list[Checked]) -> None:
        self.body = body
        self.looked_at = looked_at
        """What the request's compartment checks looked at (`services.fhir.compartment.touched`)."""

    def withheld(self) -> _Answer:
        """The answer of a refusal: none of the body, and all that the checks looked at."""
        return _Answer(b"", self.looked_at)

    @cached_property
    def resources(self) -> list[Mapping[str, Any]]:
        """The resources the response carries (a resource, or a Bundle's entries); none for an outcome."""
        if not self.body:
            return []
        for item in self.looked_at:
            if isinstance(item, StoredResource) and item.content == self.body:
                return list(_carried(item.resource))
        try:
            value = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return []
        return list(_carried(value))


def _carried(value: Any) -> Iterator[Mapping[str, Any]]:
    """The resources a parsed FHIR JSON response carries (a resource, or a Bundle's entries)."""
    if not isinstance(value, Mapping):
        return
    if value.get("resourceType") == "Bundle":
        for entry in value.get("entry") or []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict) and resource.get("resourceType") != "OperationOutcome":
                yield resource
    elif value.get("resourceType") not in (None, "OperationOutcome", "Parameters"):
        yield value


def _reference(item: Checked) -> str | None:
    """`Type/id` of a resource (stored or parsed), None when it has no id."""
    if isinstance(item, StoredResource):
        return f"{item.resource_type}/{item.id}"
    kind, ident = item.get("resourceType"), item.get("id")
    return f"{kind}/{ident}" if isinstance(kind, str) and isinstance(ident, str) else None


def _entity(reference: str) -> dict[str, Any]:
    patient = reference.startswith("Patient/")
    return {
        "what": {"reference": reference},
        "type": {"system": ENTITY_TYPE, "code": "1" if patient else "2",
                 "display": "Person" if patient else "System Object"},
        "role": {"system": OBJECT_ROLE, "code": "1" if patient else "4",
                 "display": "Patient" if patient else "Domain Resource"},
    }


def _is_ip(host: str) -> bool:
    """agent.network.type: 2 for an IP address, 1 for a machine name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _agents(principal: Principal, client_host: str | None) -> list[dict[str, Any]]:
    """The token's subject (the requestor) and, when it is someone else, the client application."""
    network = {"network": {"address": client_host[:64], "type": "2" if _is_ip(client_host) else "1"}} \
        if client_host else {}
    if not principal.authenticated:
        return [{"who": {"identifier": {"system": ANONYMOUS_SYSTEM, "value": "anonymous"},
                         "display": "unauthenticated caller"}, "requestor": True, **network}]
    system = principal.issuer or ANONYMOUS_SYSTEM
    who: dict[str, Any] = {"identifier": {"system": system, "value": principal.subject or principal.client_id}}
    if principal.fhir_user and "/" in principal.fhir_user:
        who["reference"] = principal.fhir_user
    agents = [{"who": who, "requestor": True, **network}]
    if principal.client_id and principal.client_id != principal.subject:
        agents.append({
            "type": {"coding": [{"system": DICOM, "code": "110150", "display": "Application"}]},
            "who": {"identifier": {"system": system, "value": principal.client_id}},
            "requestor": False, **network,
        })
    return agents
