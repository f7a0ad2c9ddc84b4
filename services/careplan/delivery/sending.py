"""One delivery attempt: put one CarePlan version into the EHR, exactly once.

The dispatcher hands in a `Job` (everything read from our database) and gets back
`Delivered` or an `EhrError`. Inside, the rules of issue 5:

- **Never trust If-None-Exist alone.** When an earlier attempt may have reached the
  EHR (`job.ambiguous`: a timeout, a dropped connection, a 5xx after sending, a worker
  killed mid-request), or when the EHR does not advertise conditional create, the
  EHR is searched first (the plan by its identifier, the Provenance by its
  delivery tag) and only what is missing is sent.
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.careplan.delivery.ehr_client import EhrClient, EhrResponse, parse_location, version_from_etag
from services.careplan.delivery.errors import EhrError, EhrRejected
from services.careplan.delivery.payloads import (
    ReferenceRewriter,
    document_identifier,
    document_reference,
    ehr_careplan,
    plan_identifier,
    post_entry,
    practitioner_of,
    provenance,
    provenance_search,
    provenance_tag,
    put_entry,
    token,
    transaction,
    urn,
)
from services.careplan.delivery.readback import dropped_elements
from services.careplan.delivery.shapes import DOCUMENT, TRANSACTION, EhrCapabilities, ShapeSelector

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
    def __init__(self, client: EhrClient, shapes: ShapeSelector, *, read_back: bool = True) -> None:
        self.client = client
        self.shapes = shapes
        self.read_back = read_back

    async def deliver(self, job: Job) -> Delivered:
        shape, capabilities = await self.shapes.current(self.client)
        prior = job.prior
        if prior is not None and prior.ehr_type == "DocumentReference":
            shape = DOCUMENT  # the EHR holds this plan as documents: keep adding to that chain
        if shape == DOCUMENT:
            return await self._document(job, capabilities)
        if prior is not None and prior.ehr_type == "CarePlan":
            return await self._update(job, shape, prior)
        return await self._create(job, shape, capabilities)

    # ------------------------------------------------------------------ create

    async def _create(self, job: Job, shape: str, capabilities: EhrCapabilities) -> Delivered:
        identifier = plan_identifier(job.plan)
        sent = ehr_careplan(job.plan, job.rewriter)
        found_plan: _Written | None = None
        if job.ambiguous or not capabilities.trusts_conditional_create("CarePlan"):
            found_plan, found_prov = await self._find_delivered(job, "CarePlan", identifier)
            if found_plan is not None and found_prov is not None:
                log.info("delivery already in the EHR; nothing resent", extra=_ids(job))
                return await self._done(job, shape, found_plan, [found_plan, found_prov], sent, resent=False)
        if shape == TRANSACTION:
            plan_urn = urn()
            entries = []
            if found_plan is None:
                entries.append(post_entry(sent, full_url=plan_urn, if_none_exist=f"identifier={token(identifier)}"))
            target = plan_urn if found_plan is None else f"CarePlan/{found_plan.id}"
            entries.append(post_entry(self._provenance(job, target, "CREATE"), full_url=urn(),
                                      if_none_exist=provenance_search(job.delivery_id)))
            written = await self._transaction(entries, job)
            plan = found_plan or written[0]
            return await self._done(job, shape, plan, ([found_plan] if found_plan else []) + written, sent)
        plan = found_plan or _written(await self.client.create(
            sent, if_none_exist=f"identifier={token(identifier)}", request_id=job.request_id), "CarePlan")
        prov = await self._create_provenance(job, f"CarePlan/{plan.id}", "CREATE")
        return await self._done(job, shape, plan, [plan, prov], sent)

    # ------------------------------------------------------------------ update

    async def _update(self, job: Job, shape: str, prior: Prior) -> Delivered:
        ehr_id, if_match = prior.ehr_id, prior.ehr_version
        desired = ehr_careplan(job.plan, job.rewriter, ehr_id=ehr_id)
        before = ehr_careplan(job.prior_plan, job.rewriter, ehr_id=ehr_id) if job.prior_plan else None
        target = _Written("CarePlan", ehr_id, if_match)
        if job.ambiguous:
            found_prov = await self._find("Provenance", {"_tag": provenance_tag(job.delivery_id)}, job)
            if found_prov is not None:
                current = await self.client.read("CarePlan", ehr_id, request_id=job.request_id)
                plan = _Written("CarePlan", ehr_id, _version(current),
                                _representation(current.body, "CarePlan", ehr_id))
                return await self._done(job, shape, plan, [plan, found_prov], desired, resent=False)
        body: dict[str, Any] | None = desired
        for round_ in range(1, MAX_CONFLICT_ROUNDS + 1):
            try:
                if body is None:  # the EHR's copy already shows this change: only the Provenance is missing
                    prov = await self._create_provenance(job, f"CarePlan/{ehr_id}", "UPDATE")
                    return await self._done(job, shape, target, [target, prov], desired)
                if shape == TRANSACTION:
                    entries = [put_entry(body, if_match=if_match),
                               post_entry(self._provenance(job, f"CarePlan/{ehr_id}", "UPDATE"), full_url=urn(),
                                          if_none_exist=provenance_search(job.delivery_id))]
                    written = await self._transaction(entries, job)
                    return await self._done(job, shape, written[0], written, desired)
                plan = _written(await self.client.update(body, if_match=if_match, request_id=job.request_id),
                                "CarePlan", ehr_id)
                prov = await self._create_provenance(job, f"CarePlan/{ehr_id}", "UPDATE")
                return await self._done(job, shape, plan, [plan, prov], desired)
            except EhrRejected as rejected:
                if rejected.status != 412 or round_ == MAX_CONFLICT_ROUNDS:
                    raise
                log.info("EHR copy changed (412); re-reading and re-applying", extra=_ids(job))
                current = await self.client.read("CarePlan", ehr_id, request_id=job.request_id)
                if_match = _version(current)
                target = _Written("CarePlan", ehr_id, if_match, _representation(current.body, "CarePlan", ehr_id))
                body = reapply(current.body or {}, before, desired)
        raise AssertionError("unreachable")  # pragma: no cover

    # ---------------------------------------------------------------- document

    async def _document(self, job: Job, capabilities: EhrCapabilities) -> Delivered:
        prior = job.prior
        replaces = f"DocumentReference/{prior.ehr_id}" if prior and prior.ehr_type == "DocumentReference" else None
        operation = "CREATE" if prior is None else "UPDATE"
        identifier = document_identifier(job.plan, job.version)
        sent = document_reference(job.plan, ehr_careplan(job.plan, job.rewriter), version=job.version,
                                  recorded=datetime.now(UTC), replaces=replaces)
        found: _Written | None = None
        if job.ambiguous or not capabilities.trusts_conditional_create("DocumentReference"):
            found, found_prov = await self._find_delivered(job, "DocumentReference", identifier)
            if found is not None and found_prov is not None:
                return await self._done(job, DOCUMENT, found, [found, found_prov], sent, resent=False)
        document = found or _written(await self.client.create(
            sent, if_none_exist=f"identifier={token(identifier)}", request_id=job.request_id), "DocumentReference")
        prov = await self._create_provenance(job, f"DocumentReference/{document.id}", operation)
        return await self._done(job, DOCUMENT, document, [document, prov], sent)

    # ----------------------------------------------------------------- helpers

    def _provenance(self, job: Job, target: str, operation: str) -> dict[str, Any]:
        protocols = job.plan.get("instantiatesCanonical") or [None]
        return provenance(target=target, delivery_id=job.delivery_id, operation=operation,
                          recorded=datetime.now(UTC),
                          practitioner=practitioner_of(job.plan, job.assessment_resource),
                          assessment=job.assessment, protocol=protocols[0])

    async def _create_provenance(self, job: Job, target: str, operation: str) -> _Written:
        response = await self.client.create(self._provenance(job, target, operation),
                                            if_none_exist=provenance_search(job.delivery_id),
                                            request_id=job.request_id)
        return _written(response, "Provenance")

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

    async def _find_delivered(self, job: Job, resource_type: str,
                              identifier: dict[str, str]) -> tuple[_Written | None, _Written | None]:
        """Search-before-resend: the resource by its identifier and, when it is there, this delivery's
        Provenance (both present means an earlier attempt reached the EHR)."""
        found = await self._find(resource_type, {"identifier": token(identifier)}, job)
        if found is None:
            return None, None
        return found, await self._find("Provenance", {"_tag": provenance_tag(job.delivery_id)}, job)

    async def _find(self, resource_type: str, params: dict[str, str], job: Job) -> _Written | None:
        matches = await self.client.search(resource_type, params, request_id=job.request_id)
        if len(matches) > 1:
            log.warning("the EHR holds several matches for one delivery key",
                        extra=_ids(job) | {"resource_type": resource_type, "matches": len(matches)})
        if not matches:
            return None
        first = matches[0]
        return _Written(resource_type, first["id"], (first.get("meta") or {}).get("versionId"))

    async def _done(self, job: Job, shape: str, main: _Written, written: list[_Written], sent: dict[str, Any],
                    *, resent: bool = True) -> Delivered:
        readback = await self._read_back(job, main, sent) if self.read_back else None
        return Delivered(shape=shape, ehr_type=main.resource_type, ehr_id=main.id, ehr_version=main.version,
                         outputs=[w.output for w in written], readback=readback, resent=resent)

    async def _read_back(self, job: Job, main: _Written, sent: dict[str, Any]) -> list[str] | None:
        """Elements of `sent` the EHR did not keep; None when the stored copy could not be had.

        The representation the EHR answered the write with is what it stored, so it is compared as is;
        a GET is spent only when the answer did not carry it (return=minimal servers, search-found copies)."""
        stored = main.stored
        if stored is None:
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


def _version(response: EhrResponse) -> str | None:
    return ((response.body or {}).get("meta") or {}).get("versionId") or response.etag_version


def _ids(job: Job) -> dict[str, Any]:
    return {"delivery_id": job.delivery_id, "careplan_id": job.careplan_id, "careplan_version": job.version}
