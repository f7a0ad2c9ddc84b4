"""One delivery attempt: put one CarePlan version into the EHR, exactly once.

The dispatcher hands in a `Job` (everything read from our database) and gets back
`Delivered`, an `EhrError`, or `CannotDeliver` (the EHR declares no safe way; the
message names the missing capability). Every request follows the EHR's request plan
(request_plan.py): only what its CapabilityStatement declares is sent. Inside:

- **Never trust If-None-Exist alone.** When an earlier attempt may have reached the
  EHR (`job.ambiguous`: a timeout, a dropped connection, a 5xx after sending, a worker
  killed mid-request), or when the EHR does not declare conditional create, the
  EHR is searched first (the plan by the search the plan names, the Provenance by its
  delivery tag or target) and only what is missing is sent.
- **Documents**: a later version updates the document (If-Match) where the EHR declares
  update, else is a new document that replaces the previous one.
- **Updates** (a later version of a plan the EHR already holds) are a `PUT` with
  `If-Match` on the version the EHR last returned. A 412 means someone changed the
  EHR's copy: it is read again, our change (the top-level elements that differ
  between the version the EHR got from us and this one) is applied onto it, and the
  update is retried on the version just read; if the EHR's copy already shows our
  change, only the Provenance is added.
- **Read back once** after success and record elements the EHR dropped. Writes ask for
  `Prefer: return=representation`, so the EHR's answer (each transaction-response entry,
  or the body of a single create/update) normally carries the stored resource already and
  is compared directly; only when it does not is the resource read with a GET.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.careplan.delivery.ehr_client import EhrClient, EhrResponse, parse_location, version_from_etag
from services.careplan.delivery.errors import EhrError, EhrRejected
from services.careplan.delivery.payloads import (
    PLAN_OF_CARE_NOTE,
    SERVICE_DEVICE,
    ReferenceRewriter,
    document_identifier,
    document_reference,
    ehr_careplan,
    plan_identifier,
    post_entry,
    practitioner_of,
    protocol_reference,
    provenance,
    provenance_search,
    provenance_tag,
    put_entry,
    token,
    transaction,
    urn,
    us_core_careplan,
)
from services.careplan.delivery.readback import dropped_elements
from services.careplan.delivery.request_plan import (
    DOCUMENT,
    INDIVIDUAL,
    TRANSACTION,
    UPDATE,
    CannotDeliver,
    PlanSelector,
    RequestPlan,
)

log = logging.getLogger("cicatrix.careplan.delivery")

MAX_CONFLICT_ROUNDS = 3
"""412s in a row before the attempt counts as failed (and is retried later with backoff)."""


@dataclass(frozen=True)
class Prior:
    """What the EHR holds from the newest completed delivery of the same plan."""

    careplan_version: int
    shape: str | None
    ehr_type: str
    ehr_id: str
    ehr_version: str | None


@dataclass
class Job:
    delivery_id: str
    careplan_id: str
    version: int
    attempt: int
    ambiguous: bool
    plan: dict[str, Any]
    prior: Prior | None = None
    prior_plan: dict[str, Any] | None = None
    """Our version of the plan the EHR got last time (to re-apply our change after a 412)."""
    assessment: dict[str, Any] | None = None
    """The logical reference to the assessment (for the Provenance entity)."""
    assessment_resource: dict[str, Any] | None = None
    rewriter: ReferenceRewriter = field(default_factory=lambda: ReferenceRewriter(assessments={},
                                                                                   delivered_plans={}))

    @property
    def request_id(self) -> str:
        return f"{self.delivery_id}.{self.attempt}"


@dataclass
class Delivered:
    shape: str
    ehr_type: str
    ehr_id: str
    ehr_version: str | None
    outputs: list[str]
    readback: list[str] | None
    resent: bool = True
    """False when the search-before-resend found everything already in the EHR."""


@dataclass(frozen=True)
class _Written:
    resource_type: str
    id: str
    version: str | None
    stored: dict[str, Any] | None = field(default=None, compare=False, hash=False, repr=False)
    """The resource as the EHR answered the write with it (return=representation); None: read it back."""

    @property
    def output(self) -> str:
        return f"{self.resource_type}/{self.id}" + (f"/_history/{self.version}" if self.version else "")


class Sender:
    def __init__(self, client: EhrClient, plans: PlanSelector, *, read_back: bool = True,
                 search_max_pages: int = 10) -> None:
        self.client = client
        self.plans = plans
        self.read_back = read_back
        self.search_max_pages = search_max_pages

    async def deliver(self, job: Job) -> Delivered:
        """One attempt along the EHR's request plan; CannotDeliver when the plan has no safe way."""
        plan = await self.plans.current(self.client)
        prior = job.prior
        if prior is not None and prior.ehr_type == "DocumentReference" and plan.shape == DOCUMENT:
            return await self._document(job, plan, prior)  # the EHR holds this plan as documents: keep the chain
        if prior is not None and prior.ehr_type == "CarePlan":
            if plan.cannot_update:
                raise CannotDeliver(plan.cannot_update)
            return await self._update(job, plan, prior)
        if plan.shape is None:
            raise CannotDeliver(plan.cannot_create or "the EHR declares no way to receive a care plan")
        if plan.shape == DOCUMENT:
            return await self._document(job, plan, None)
        return await self._create(job, plan)

    # ------------------------------------------------------------------ create

    async def _create(self, job: Job, plan: RequestPlan) -> Delivered:
        identifier = plan_identifier(job.plan)
        sent = self._careplan(job, plan)
        found = await self._search_first(job, plan, "CarePlan", identifier)
        if found is not None:
            provenance_found = await self._find_provenance(job, plan, f"CarePlan/{found.id}")
            if provenance_found is not False:
                log.info("delivery already in the EHR; nothing resent", extra=_ids(job))
                return await self._done(job, plan, found, [found, *_present(provenance_found)], sent, resent=False)
        condition = f"identifier={token(identifier)}" if plan.conditional_create else None
        if plan.shape == TRANSACTION:
            plan_urn = urn()
            entries = [] if found else [post_entry(sent, full_url=plan_urn, if_none_exist=condition)]
            if plan.provenance is not None:
                target = plan_urn if found is None else f"CarePlan/{found.id}"
                entries.append(post_entry(self._provenance(job, target, "CREATE"), full_url=urn(),
                                          if_none_exist=self._provenance_condition(job, plan)))
            written = await self._transaction(entries, job)
            main = found or written[0]
            return await self._done(job, plan, main, ([found] if found else []) + written, sent)
        main = found or _written(await self.client.create(sent, if_none_exist=condition, request_id=job.request_id),
                                 "CarePlan")
        return await self._done(job, plan, main, [main, *await self._add_provenance(job, plan, main, "CREATE")], sent)

    # ------------------------------------------------------------------ update

    async def _update(self, job: Job, plan: RequestPlan, prior: Prior) -> Delivered:
        ehr_id = prior.ehr_id
        if_match = prior.ehr_version if "CarePlan" in plan.if_match else None
        desired = self._careplan(job, plan, ehr_id=ehr_id)
        before = self._careplan(job, plan, ehr_id=ehr_id, version=job.prior_plan) if job.prior_plan else None
        target = _Written("CarePlan", ehr_id, prior.ehr_version)
        if job.ambiguous and plan.provenance is not None and plan.provenance.lookup is not None:
            found = await self._find_provenance(job, plan, f"CarePlan/{ehr_id}")
            if isinstance(found, _Written):
                current = await self.client.read("CarePlan", ehr_id, request_id=job.request_id)
                main = _held(current, "CarePlan", ehr_id)
                return await self._done(job, plan, main, [main, found], desired, resent=False)
        body: dict[str, Any] | None = desired
        if job.ambiguous:  # the EHR's copy may show this version already
            current = await self.client.read("CarePlan", ehr_id, request_id=job.request_id)
            if_match = _version(current) if "CarePlan" in plan.if_match else None
            target = _held(current, "CarePlan", ehr_id)
            body = reapply(current.body or {}, before, desired)
        for round_ in range(1, MAX_CONFLICT_ROUNDS + 1):
            try:
                if body is None:  # the EHR's copy already shows this change: at most the Provenance is missing
                    added = [] if _atomic(plan) else await self._add_provenance(job, plan, target, "UPDATE")
                    return await self._done(job, plan, target, [target, *added], desired, resent=bool(added))
                if plan.shape == TRANSACTION:
                    entries = [put_entry(body, if_match=if_match)]
                    if plan.provenance is not None:
                        entries.append(post_entry(self._provenance(job, f"CarePlan/{ehr_id}", "UPDATE"),
                                                  full_url=urn(), if_none_exist=self._provenance_condition(job, plan)))
                    written = await self._transaction(entries, job)
                    return await self._done(job, plan, written[0], written, desired)
                main = _written(await self.client.update(body, if_match=if_match, request_id=job.request_id),
                                "CarePlan", ehr_id)
                added = await self._add_provenance(job, plan, main, "UPDATE")
                return await self._done(job, plan, main, [main, *added], desired)
            except EhrRejected as rejected:
                if rejected.status != 412 or round_ == MAX_CONFLICT_ROUNDS:
                    raise
                log.info("EHR copy changed (412); re-reading and re-applying", extra=_ids(job))
                current = await self.client.read("CarePlan", ehr_id, request_id=job.request_id)
                target = _held(current, "CarePlan", ehr_id)
                if_match = target.version
                body = reapply(current.body or {}, before, desired)
        raise AssertionError("unreachable")  # pragma: no cover

    # ---------------------------------------------------------------- document

    async def _document(self, job: Job, plan: RequestPlan, prior: Prior | None) -> Delivered:
        """A plan version as a DocumentReference: created, or for a later version updated where the EHR
        declares update, else created so that it replaces the previous one."""
        identifier = document_identifier(job.plan, job.version)
        # An update rewrites who answers for the note, so it needs the practitioner to name; without one the new
        # version is a note of its own that replaces the previous one.
        author = practitioner_of(job.plan, job.assessment_resource)
        if prior is not None and plan.document_versions == UPDATE and author is not None:
            return await self._document_update(job, plan, prior, identifier)
        replaces = f"DocumentReference/{prior.ehr_id}" if prior is not None else None
        sent = self._document_body(job, plan, replaces=replaces)
        found = await self._search_first(job, plan, "DocumentReference", identifier)
        if found is not None:
            provenance_found = await self._find_provenance(job, plan, f"DocumentReference/{found.id}")
            if provenance_found is not False:
                return await self._done(job, plan, found, [found, *_present(provenance_found)], sent, resent=False)
        condition = f"identifier={token(identifier)}" if plan.conditional_create else None
        document = found or _written(await self.client.create(sent, if_none_exist=condition,
                                                              request_id=job.request_id), "DocumentReference")
        operation = "CREATE" if prior is None else "UPDATE"
        added = await self._add_provenance(job, plan, document, operation)
        return await self._done(job, plan, document, [document, *added], sent)

    async def _document_update(self, job: Job, plan: RequestPlan, prior: Prior,
                               identifier: dict[str, str]) -> Delivered:
        """PUT the new version over the document the EHR holds; its masterIdentifier says which version it is,
        so an ambiguous earlier attempt (or a 412) is settled by one read."""
        desired = {"resourceType": "DocumentReference", "id": prior.ehr_id} | self._document_body(
            job, plan, replaces=None)
        if_match = prior.ehr_version if "DocumentReference" in plan.if_match else None
        for round_ in range(1, MAX_CONFLICT_ROUNDS + 1):
            if job.ambiguous or round_ > 1:
                current = await self.client.read("DocumentReference", prior.ehr_id, request_id=job.request_id)
                held = _held(current, "DocumentReference", prior.ehr_id)
                if (held.stored or {}).get("masterIdentifier") == identifier:
                    provenance_found = await self._find_provenance(job, plan, f"DocumentReference/{held.id}")
                    added = [] if provenance_found is not False else await self._add_provenance(
                        job, plan, held, "UPDATE")
                    return await self._done(job, plan, held, [held, *_present(provenance_found), *added], desired,
                                            resent=bool(added))
                if_match = held.version if "DocumentReference" in plan.if_match else None
            try:
                document = _written(await self.client.update(desired, if_match=if_match, request_id=job.request_id),
                                    "DocumentReference", prior.ehr_id)
            except EhrRejected as rejected:
                if rejected.status != 412 or round_ == MAX_CONFLICT_ROUNDS:
                    raise
                log.info("EHR document changed (412); re-reading", extra=_ids(job))
                continue
            added = await self._add_provenance(job, plan, document, "UPDATE")
            return await self._done(job, plan, document, [document, *added], desired)
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------- resources

    def _careplan(self, job: Job, plan: RequestPlan, *, ehr_id: str | None = None,
                  version: dict[str, Any] | None = None) -> dict[str, Any]:
        """The CarePlan to send: references rewritten; when no Provenance carries them, the practitioner as
        author and the care-plan service (Device) as contributor; US Core conformant when the EHR asks for it."""
        careplan = ehr_careplan(version or job.plan, job.rewriter, ehr_id=ehr_id)
        if plan.provenance is None:
            practitioner = practitioner_of(job.plan, job.assessment_resource)
            if practitioner is not None and "author" not in careplan:
                careplan["author"] = practitioner
            careplan["contributor"] = [*careplan.get("contributor", []), SERVICE_DEVICE]
        return us_core_careplan(careplan) if plan.us_core_careplan else careplan

    def _document_body(self, job: Job, plan: RequestPlan, *, replaces: str | None) -> dict[str, Any]:
        protocols = job.plan.get("instantiatesCanonical") or []
        related = ([job.assessment] if job.assessment else []) + [protocol_reference(p) for p in protocols[:1]]
        return document_reference(job.plan, version=job.version, recorded=datetime.now(UTC), replaces=replaces,
                                  practitioner=practitioner_of(job.plan, job.assessment_resource),
                                  related=related, us_core=plan.us_core_document)

    # ----------------------------------------------------------------- helpers

    def _provenance(self, job: Job, target: str, operation: str) -> dict[str, Any]:
        protocols = job.plan.get("instantiatesCanonical") or [None]
        return provenance(target=target, delivery_id=job.delivery_id, operation=operation,
                          recorded=datetime.now(UTC),
                          practitioner=practitioner_of(job.plan, job.assessment_resource),
                          assessment=job.assessment, protocol=protocols[0])

    @staticmethod
    def _provenance_condition(job: Job, plan: RequestPlan) -> str | None:
        return provenance_search(job.delivery_id) if plan.provenance and plan.provenance.if_none_exist else None

    async def _add_provenance(self, job: Job, plan: RequestPlan, target: _Written, operation: str) -> list[_Written]:
        """The Provenance of this delivery for `target`, when the plan sends one (at most one copy)."""
        if plan.provenance is None:
            return []
        reference = f"{target.resource_type}/{target.id}"
        if not plan.provenance.if_none_exist and (job.ambiguous or job.attempt > 1):
            found = await self._find_provenance(job, plan, reference)
            if isinstance(found, _Written):
                return [found]
        response = await self.client.create(self._provenance(job, reference, operation),
                                            if_none_exist=self._provenance_condition(job, plan),
                                            request_id=job.request_id)
        return [_written(response, "Provenance")]

    async def _transaction(self, entries: list[dict[str, Any]], job: Job) -> list[_Written]:
        response = await self.client.transaction(transaction(entries), request_id=job.request_id)
        results = response.get("entry", [])
        if len(results) != len(entries):
            raise EhrRejected(502, None, request="POST /",
                              message="the transaction-response does not answer every entry")
        written = []
        for request, result in zip(entries, results, strict=True):
            answer = result.get("response") or {}
            resource = result.get("resource") or {}
            if answer.get("location"):
                kind, ident, version = parse_location(answer["location"])
                version = version or version_from_etag(answer.get("etag"))
            elif resource.get("id"):
                kind, ident, version = resource["resourceType"], resource["id"], (resource.get("meta") or {}).get(
                    "versionId")
            else:
                raise EhrRejected(502, None, request="POST /",
                                  message=f"the transaction-response names no {request['resource']['resourceType']}")
            written.append(_Written(kind, ident, version, _representation(resource, kind, ident)))
        return written

    async def _search_first(self, job: Job, plan: RequestPlan, resource_type: str,
                            identifier: dict[str, str]) -> _Written | None:
        """Search-before-resend: the copy an earlier attempt left, when one may exist and a search can tell.

        Without conditional create every attempt searches (an earlier one may have written the resource and
        failed later on); with it, only an ambiguous one does (If-None-Exist covers the rest)."""
        if plan.lookup is None or not (job.ambiguous or not plan.conditional_create):
            return None
        if plan.lookup.exact:
            return await self._find(resource_type, {"identifier": token(identifier)}, job)
        params = {"patient": str((job.plan.get("subject") or {}).get("reference", ""))}
        if "type" in plan.lookup.params:
            params["type"] = f"{PLAN_OF_CARE_NOTE['system']}|{PLAN_OF_CARE_NOTE['code']}"
        return await self._find(resource_type, params, job, match=lambda r: _identified(r, identifier))

    async def _find_provenance(self, job: Job, plan: RequestPlan, target: str) -> _Written | bool | None:
        """This delivery's Provenance: found (_Written), not found (False), or not applicable (None: the plan
        sends none, or the transaction that wrote `target` wrote it too)."""
        prov = plan.provenance
        if prov is None or prov.lookup is None:
            return None
        tag = provenance_tag(job.delivery_id)
        if prov.lookup == "_tag":
            found = await self._find("Provenance", {"_tag": tag}, job)
        else:
            found = await self._find("Provenance", {"target": target}, job, match=lambda r: _tagged(r, tag))
        return found or False

    async def _find(self, resource_type: str, params: dict[str, str], job: Job,
                    match: Callable[[dict[str, Any]], bool] | None = None) -> _Written | None:
        pages = 1 if match is None else self.search_max_pages
        matches = await self.client.search(resource_type, params, request_id=job.request_id, max_pages=pages)
        if match is not None:
            matches = [resource for resource in matches if match(resource)]
        if len(matches) > 1:
            log.warning("the EHR holds several matches for one delivery key",
                        extra=_ids(job) | {"resource_type": resource_type, "matches": len(matches)})
        if not matches:
            return None
        first = matches[0]
        return _Written(resource_type, first["id"], (first.get("meta") or {}).get("versionId"))

    async def _done(self, job: Job, plan: RequestPlan, main: _Written, written: list[_Written],
                    sent: dict[str, Any], *, resent: bool = True) -> Delivered:
        readback = await self._read_back(job, plan, main, sent) if self.read_back else None
        shape = DOCUMENT if main.resource_type == "DocumentReference" else (
            TRANSACTION if plan.shape == TRANSACTION else INDIVIDUAL)
        return Delivered(shape=shape, ehr_type=main.resource_type, ehr_id=main.id, ehr_version=main.version,
                         outputs=[w.output for w in written], readback=readback, resent=resent)

    async def _read_back(self, job: Job, plan: RequestPlan, main: _Written,
                         sent: dict[str, Any]) -> list[str] | None:
        """Elements of `sent` the EHR did not keep; None when the stored copy could not be had.

        The representation the EHR answered the write with is what it stored, so it is compared as is;
        a GET is spent only when the answer did not carry it (return=minimal servers, search-found copies)
        and the EHR declares read."""
        stored = main.stored
        if stored is None:
            if main.resource_type not in plan.readable:
                return None
            try:
                stored = (await self.client.read(main.resource_type, main.id, request_id=job.request_id)).body or {}
            except EhrError as exc:  # the delivery itself succeeded; a failed read-back must not undo that
                log.warning("read-back failed", extra=_ids(job) | {"error": type(exc).__name__})
                return None
        readback = dropped_elements(sent, stored)
        if readback:
            log.warning("the EHR dropped elements of the delivered plan", extra=_ids(job) | {"dropped": len(readback)})
        return readback


def reapply(current: dict[str, Any], before: dict[str, Any] | None, desired: dict[str, Any]) -> dict[str, Any] | None:
    """Our change (top-level elements that differ from `before`) applied onto the EHR's `current` copy.

    None when `current` already shows every changed element (an earlier, ambiguous attempt applied it)."""
    keys = (set(before or {}) | set(desired)) - {"resourceType", "id", "meta"}
    changed = {k for k in keys if before is None or before.get(k) != desired.get(k)}
    if all(current.get(k) == desired.get(k) for k in changed):
        return None
    merged = {k: v for k, v in current.items() if k != "meta"}
    for key in changed:
        if key in desired:
            merged[key] = desired[key]
        else:
            merged.pop(key, None)
    merged["id"] = desired["id"]
    return merged


def _written(response: EhrResponse, resource_type: str, resource_id: str | None = None) -> _Written:
    if response.location:
        kind, ident, version = parse_location(response.location)
        return _Written(kind, ident, version or response.etag_version, _representation(response.body, kind, ident))
    body = response.body or {}
    if body.get("id"):
        kind = body.get("resourceType", resource_type)
        return _Written(kind, body["id"], _version(response), _representation(body, kind, body["id"]))
    if resource_id:
        return _Written(resource_type, resource_id, response.etag_version)
    raise EhrRejected(502, None, request=f"POST {resource_type}",
                      message="the EHR's answer names neither a Location nor the resource")


def _representation(body: dict[str, Any] | None, resource_type: str, resource_id: str) -> dict[str, Any] | None:
    """`body` when it is the written resource itself (not an OperationOutcome, not some other resource)."""
    if isinstance(body, dict) and body.get("resourceType") == resource_type and body.get("id") == resource_id:
        return body
    return None


def _held(response: EhrResponse, resource_type: str, resource_id: str) -> _Written:
    """The resource a read answered with, as the EHR holds it now."""
    return _Written(resource_type, resource_id, _version(response), _representation(response.body, resource_type,
                                                                                      resource_id))


def _version(response: EhrResponse) -> str | None:
    return ((response.body or {}).get("meta") or {}).get("versionId") or response.etag_version


def _identified(resource: dict[str, Any], identifier: dict[str, str]) -> bool:
    """Whether `resource` carries `identifier` (as masterIdentifier or among its identifiers)."""
    held = [resource.get("masterIdentifier"), *(resource.get("identifier") or [])]
    return any(isinstance(i, dict) and i.get("system") == identifier["system"] and i.get("value") == identifier["value"]
               for i in held)


def _tagged(resource: dict[str, Any], tag: str) -> bool:
    system, _, code = tag.partition("|")
    return any(t.get("system") == system and t.get("code") == code for t in (resource.get("meta") or {}).get("tag", []))


def _present(found: _Written | bool | None) -> list[_Written]:
    return [found] if isinstance(found, _Written) else []


def _atomic(plan: RequestPlan) -> bool:
    """A transaction that carries the Provenance: a write found in the EHR came with its Provenance."""
    return plan.shape == TRANSACTION and plan.provenance is not None and plan.provenance.lookup is None


def _ids(job: Job) -> dict[str, Any]:
    return {"delivery_id": job.delivery_id, "careplan_id": job.careplan_id, "careplan_version": job.version}
