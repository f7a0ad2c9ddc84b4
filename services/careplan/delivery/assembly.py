"""Assembling a delivery attempt: everything it needs, read from our database once it is claimed.

For each claimed delivery: whether a later version of the plan reached the EHR first (then
it is superseded and nothing is sent), the plan version itself, what the EHR already holds
of the plan (the newest completed delivery) and our copy of that version, and what the
plan's references to the assessment and to earlier plans become on the EHR. The result is
a `sending.Job`; sending it never touches our database.

A batch is assembled on the claim's connection (the same thread hop) in a handful of
statements for the whole batch, not a few per delivery: the batch's completed deliveries,
the plan versions, the assessments, and the earlier plans referred to. Reading never raises
once the claim committed: a failure becomes that delivery's result, and its attempt fails
and retries like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection
from sqlmodel import Session

from services.careplan.delivery import claims
from services.careplan.delivery.claims import Claim
from services.careplan.delivery.outbox import Delivery
from services.careplan.delivery.payloads import ReferenceRewriter, assessment_identifier
from services.careplan.delivery.sending import Job, Prior
from services.careplan.searchparams import SEARCH_PARAMS
from services.careplan.tables import CareplanResource, CareplanResourceVersion, CareplanSearchIndex
from services.fhir.outcome import Gone, NotFound
from services.fhir.references import referenced_ids
from services.fhir.store import ResourceStore, StoredResource

Assembled = Job | str | Exception
"""A job to send; a str: the delivery is superseded (the reason); an Exception: reading the job failed."""


class JobAssembler:
    """Reads the jobs of claimed deliveries from the careplan database."""

    def __init__(self) -> None:
        self.store = ResourceStore(CareplanResource, CareplanResourceVersion, CareplanSearchIndex, SEARCH_PARAMS)

    def assemble(self, connection: Connection, claimed: list[Claim]) -> list[Assembled]:
        """One result per claim, in order, read on `connection` in a handful of statements for the whole batch:
        the plans' completed deliveries, the plan versions, the assessments, the earlier plans they refer to."""
        if not claimed:
            return []
        try:
            with Session(bind=connection) as session:
                return self._batch(session, claimed)
        except Exception as exc:  # noqa: BLE001 - e.g. the connection failed: every attempt of the batch fails
            return [exc] * len(claimed)

    def _batch(self, session: Session, claimed: list[Claim]) -> list[Assembled]:
        completed = claims.completed_by_plan(session, [claim.delivery.careplan_id for claim in claimed])
        reads: list[_Reads | str] = [_reads(claim, completed[claim.delivery.careplan_id]) for claim in claimed]
        versions = self.store.vread_many(session, "CarePlan", {key for r in reads if isinstance(r, _Reads)
                                                               for key in r.versions()})
        plans: dict[tuple[str, int], dict[str, Any] | Exception] = {}
        references: dict[tuple[str, int], dict[str, list[str]]] = {}
        for r in reads:
            if not isinstance(r, _Reads):
                continue
            for key in r.versions():
                plans[key] = _parsed_version(versions.get(key), *key)
            plan = plans[r.version]
            if isinstance(plan, dict):
                references[r.version] = referenced_ids(plan, ("QuestionnaireResponse", "CarePlan"))
        stored = self.store.read_many(session, "QuestionnaireResponse",
                                      [i for refs in references.values() for i in refs["QuestionnaireResponse"]])
        assessments = {ref: _parsed(row) for ref, row in stored.items() if not row.deleted}
        delivered = _delivered_plans(session, [i for refs in references.values() for i in refs["CarePlan"]])
        return [r if isinstance(r, str) else _job(claim, r, plans, references.get(r.version), assessments, delivered)
                for claim, r in zip(claimed, reads, strict=True)]


@dataclass(frozen=True)
class _Reads:
    """The plan versions one delivery needs: its own, and the one the EHR holds (when it holds an earlier one)."""

    version: tuple[str, int]
    prior: Prior | None

    def versions(self) -> list[tuple[str, int]]:
        return [self.version] + ([(self.version[0], self.prior.careplan_version)] if self.prior else [])


def _reads(claim: Claim, completed: list[Delivery]) -> _Reads | str:
    """What to read for `claim`; a str when the delivery is superseded.

    `completed`: the plan's deliveries that reached the EHR, newest first (`claims.completed_by_plan`)."""
    delivery = claim.delivery
    newest = next((row for row in completed if row.careplan_version != delivery.careplan_version), None)
    if newest is not None and newest.careplan_version > delivery.careplan_version:
        return f"superseded: version {newest.careplan_version} of the plan reached the EHR (Task/{newest.id})"
    prior = None
    if newest is not None and newest.ehr_id and newest.ehr_type:  # the EHR holds an earlier version
        prior = Prior(newest.careplan_version, newest.shape, newest.ehr_type, newest.ehr_id, newest.ehr_version)
    return _Reads((delivery.careplan_id, delivery.careplan_version), prior)


def _parsed_version(row: StoredResource | None, careplan_id: str, version: int) -> dict[str, Any] | Exception:
    """The plan version's content; NotFound or Gone (the attempt fails and retries) as `vread` would raise."""
    if row is None:
        return NotFound(f"CarePlan/{careplan_id} has no version {version}")
    if row.deleted:
        return Gone(f"Version {version} of CarePlan/{careplan_id} is a deletion")
    try:
        return row.parsed()
    except Exception as exc:  # noqa: BLE001 - this delivery's attempt reports it; the batch goes on
        return exc


def _parsed(row: StoredResource) -> dict[str, Any] | None:
    try:
        return row.parsed()
    except Exception:  # noqa: BLE001 - an unreadable assessment is sent by our identifier alone
        return None


def _job(claim: Claim, reads: _Reads, plans: dict[tuple[str, int], dict[str, Any] | Exception],
         references: dict[str, list[str]] | None, assessments: dict[str, dict[str, Any] | None],
         delivered: dict[str, str]) -> Job | Exception:
    """Everything the attempt needs from our database (read for the whole batch beforehand)."""
    plan = plans[reads.version]
    prior_plan = plans[(reads.version[0], reads.prior.careplan_version)] if reads.prior else None
    if isinstance(plan, Exception):
        return plan
    if isinstance(prior_plan, Exception):
        return prior_plan
    assert references is not None  # read for every plan that parsed
    delivery = claim.delivery
    identifiers = {ref: assessment_identifier(assessments.get(ref), ref) for ref in references["QuestionnaireResponse"]}
    first_resource = next((assessments[ref] for ref in references["QuestionnaireResponse"]
                           if assessments.get(ref) is not None), None)
    rewriter = ReferenceRewriter(assessments=identifiers,
                                 delivered_plans={ref: delivered[ref] for ref in references["CarePlan"]
                                                  if ref in delivered})
    first_assessment = next(iter(identifiers), None)
    return Job(delivery_id=delivery.id, careplan_id=delivery.careplan_id, version=delivery.careplan_version,
               attempt=delivery.attempts + 1, ambiguous=claim.was_ambiguous, plan=plan, prior=reads.prior,
               prior_plan=prior_plan,
               assessment=(rewriter.rewrite({"reference": f"QuestionnaireResponse/{first_assessment}"})
                           if first_assessment else None),
               assessment_resource=first_resource, rewriter=rewriter)


def _delivered_plans(session: Session, careplan_ids: list[str]) -> dict[str, str]:
    """Our id -> the EHR's id, for each referenced plan the EHR already holds as a CarePlan (one query)."""
    if not careplan_ids:
        return {}
    delivered = {}
    for ref, rows in claims.completed_by_plan(session, list(dict.fromkeys(careplan_ids))).items():
        newest = rows[0] if rows else None
        if newest is not None and newest.ehr_type == "CarePlan" and newest.ehr_id:
            delivered[ref] = newest.ehr_id
    return delivered
