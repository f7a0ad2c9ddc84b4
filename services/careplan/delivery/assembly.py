"""Assembling a delivery attempt: everything it needs, read from our database once it is claimed.

For each claimed delivery: whether a later version of the plan reached the EHR first (then
it is superseded and nothing is sent), the plan version itself, what the EHR already holds
of the plan (the newest completed delivery) and our copy of that version, and what the
plan's references to the assessment and to earlier plans become on the EHR. The result is
a `sending.Job`; sending it never touches our database.

A batch is assembled in one session (one thread hop, one query for the batch's completed
deliveries). Reading never raises once the claim committed: a failure becomes that
delivery's result, and its attempt fails and retries like any other.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from services.careplan.delivery import claims
from services.careplan.delivery.claims import Claim
from services.careplan.delivery.outbox import Delivery
from services.careplan.delivery.payloads import ReferenceRewriter, assessment_identifier
from services.careplan.delivery.sending import Job, Prior
from services.careplan.searchparams import SEARCH_PARAMS
from services.careplan.tables import CareplanResource, CareplanResourceVersion, CareplanSearchIndex
from services.fhir.outcome import FhirError
from services.fhir.references import referenced_ids
from services.fhir.store import ResourceStore

Assembled = Job | str | Exception
"""A job to send; a str: the delivery is superseded (the reason); an Exception: reading the job failed."""


class JobAssembler:
    """Reads the jobs of claimed deliveries from the careplan database."""

    def __init__(self) -> None:
        self.store = ResourceStore(CareplanResource, CareplanResourceVersion, CareplanSearchIndex, SEARCH_PARAMS)

    def assemble(self, engine: Engine, claimed: list[Claim]) -> list[Assembled]:
        """One result per claim, in order, in one session for the batch."""
        if not claimed:
            return []
        jobs: list[Assembled] = []
        try:
            with Session(engine) as session:
                completed = claims.completed_by_plan(session, [claim.delivery.careplan_id for claim in claimed])
                for claim in claimed:
                    jobs.append(self._job_or_error(session, claim, completed[claim.delivery.careplan_id]))
        except Exception as exc:  # noqa: BLE001 - e.g. the session could not even start: every attempt fails
            jobs += [exc] * (len(claimed) - len(jobs))
        return jobs

    def _job_or_error(self, session: Session, claim: Claim, completed: list[Delivery]) -> Assembled:
        try:
            return self._job(session, claim, completed)
        except Exception as exc:  # noqa: BLE001 - the attempt reports it (and retries); the batch goes on
            session.rollback()  # a failed statement must not poison the reads of the next delivery
            return exc

    def _job(self, session: Session, claim: Claim, completed: list[Delivery]) -> Job | str:
        """Everything the attempt needs from our database; a str when the delivery is superseded.

        `completed`: the plan's deliveries that reached the EHR, newest first (`claims.completed_by_plan`)."""
        delivery = claim.delivery
        newest = next((row for row in completed if row.careplan_version != delivery.careplan_version), None)
        if newest is not None and newest.careplan_version > delivery.careplan_version:
            return (f"superseded: version {newest.careplan_version} of the plan reached the EHR "
                    f"(Task/{newest.id})")
        plan = self._plan_version(session, delivery.careplan_id, delivery.careplan_version)
        prior = prior_plan = None
        if newest is not None and newest.ehr_id and newest.ehr_type:  # the EHR holds an earlier version
            prior = Prior(newest.careplan_version, newest.shape, newest.ehr_type, newest.ehr_id, newest.ehr_version)
            prior_plan = self._plan_version(session, delivery.careplan_id, newest.careplan_version)
        references = referenced_ids(plan, ("QuestionnaireResponse", "CarePlan"))
        assessments, assessment_resource = self._assessments(session, references["QuestionnaireResponse"])
        rewriter = ReferenceRewriter(assessments=assessments,
                                     delivered_plans=_delivered_plans(session, references["CarePlan"]))
        first_assessment = next(iter(assessments), None)
        return Job(delivery_id=delivery.id, careplan_id=delivery.careplan_id, version=delivery.careplan_version,
                   attempt=delivery.attempts + 1, ambiguous=claim.was_ambiguous, plan=plan, prior=prior,
                   prior_plan=prior_plan,
                   assessment=(rewriter.rewrite({"reference": f"QuestionnaireResponse/{first_assessment}"})
                               if first_assessment else None),
                   assessment_resource=assessment_resource, rewriter=rewriter)

    def _plan_version(self, session: Session, careplan_id: str, version: int) -> dict[str, Any]:
        return self.store.vread(session, "CarePlan", careplan_id, str(version)).parsed()

    def _assessments(self, session: Session,
                     ids: list[str]) -> tuple[dict[str, dict[str, str]], dict[str, Any] | None]:
        """The identifier to send for each referenced assessment, and the first one that is stored here."""
        assessments: dict[str, dict[str, str]] = {}
        first = None
        for ref in ids:
            try:
                response = self.store.read(session, "QuestionnaireResponse", ref).parsed()
            except FhirError:
                response = None
            assessments[ref] = assessment_identifier(response, ref)
            first = first or response
        return assessments, first


def _delivered_plans(session: Session, careplan_ids: list[str]) -> dict[str, str]:
    """Our id -> the EHR's id, for each referenced plan the EHR already holds as a CarePlan."""
    delivered = {}
    for ref in careplan_ids:
        other = claims.latest_completed(session, ref)
        if other is not None and other.ehr_type == "CarePlan" and other.ehr_id:
            delivered[ref] = other.ehr_id
    return delivered
