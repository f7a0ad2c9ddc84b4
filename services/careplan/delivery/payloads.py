"""What is sent to the EHR: the CarePlan in the EHR's terms, its Provenance, the document form, the Bundle.

The stored CarePlan refers to things the EHR does not have: the assessment
(`supportingInfo` -> `QuestionnaireResponse/<id>`, stored here), the catalog's
preparations (`Medication/<id>`), the plan it replaces (`CarePlan/<our id>`). A
relative reference in a resource sent to the EHR means "this resource on *your*
server", so each is rewritten before sending:

- to a type the EHR owns (Patient, Practitioner, Encounter, Condition, ...): kept;
- `CarePlan/<ours>`: the plan's business identifier, plus the EHR's own id when
  that plan was delivered already;
- `QuestionnaireResponse/<ours>`: a logical reference by identifier (the assessment's
  own identifier when it has one, which the hospital system that sent it knows);
- anything else of ours or the catalog's (`Medication/mederma-gel`): a logical
  reference by the catalog identifier (`https://fhir.cicatrix.org/Medication|mederma-gel`),
  display kept.

Why not send the QuestionnaireResponse along in the transaction: the assessment
usually comes *from* the hospital's own forms, so a copy would duplicate it in the
patient's record; it needs one more write permission (and Oracle-class EHRs take
no QuestionnaireResponse writes, so the `document` shape could not carry it); and
the care-plan service stays the system of record for the assessment, reachable by
the identifier. The link is kept, nothing dangles.

The care-plan service appears as a Device by logical reference (identifier
`https://fhir.cicatrix.org/Device|careplan-service`), for the same reason: no
Device write is needed on the EHR.

Idempotency keys, all derived from our data so a retry can never mint new ones:
the plan's identifier (`ifNoneExist` on CarePlan), `meta.tag` with the delivery id
on the Provenance (R4 Provenance has no identifier; `_tag=` in `ifNoneExist`, or a
`target` search matched on the tag), and for the document shape a version-specific
`masterIdentifier` on the DocumentReference (R4's `identifier` search covers it).
Which of them travel in headers and which are searched is the request plan's choice
(request_plan.py), from what the EHR declares.
"""

from __future__ import annotations

import base64
import copy
import uuid
from datetime import datetime
from html import escape
from typing import Any

from services.careplan.careplan_builder import PLAN_IDENTIFIER_SYSTEM
from services.fhir.references import map_references

SUBMISSION_TAG_SYSTEM = "https://fhir.cicatrix.org/delivery"
DEVICE_IDENTIFIER = {"system": "https://fhir.cicatrix.org/Device", "value": "careplan-service"}
ASSESSMENT_ID_SYSTEM = "https://fhir.cicatrix.org/assessment-id"
DOCUMENT_ID_SYSTEM = "https://fhir.cicatrix.org/careplan-document-id"
CATALOG_IDENTIFIER_BASE = "https://fhir.cicatrix.org/"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
LOINC = "http://loinc.org"
PLAN_OF_CARE_NOTE = {"system": LOINC, "code": "18776-5", "display": "Plan of care note"}
XHTML = "application/xhtml+xml"
XHTML_NAMESPACE = "http://www.w3.org/1999/xhtml"
US_CORE_CAREPLAN = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-careplan"
US_CORE_DOCUMENT = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-documentreference"
ASSESS_PLAN = {"system": "http://hl7.org/fhir/us/core/CodeSystem/careplan-category", "code": "assess-plan",
               "display": "Assessment and Plan of Treatment"}
CLINICAL_NOTE = {"system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                 "code": "clinical-note", "display": "Clinical Note"}

EHR_OWNED_TYPES = frozenset({
    "Patient", "Practitioner", "PractitionerRole", "RelatedPerson", "Organization", "Location", "Encounter",
    "EpisodeOfCare", "Condition", "AllergyIntolerance", "Group", "CareTeam", "Observation", "Device",
})
"""Relative references to these name the patient's record in the EHR itself and are sent unchanged."""

SERVICE_DEVICE = {"type": "Device", "identifier": DEVICE_IDENTIFIER, "display": "Cicatrix care-plan service"}


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def plan_identifier(plan: dict[str, Any]) -> dict[str, str]:
    """The plan's business identifier (the one `ifNoneExist` searches on)."""
    for identifier in plan.get("identifier", []):
        if identifier.get("system") == PLAN_IDENTIFIER_SYSTEM and identifier.get("value"):
            return {"system": identifier["system"], "value": identifier["value"]}
    return {"system": PLAN_IDENTIFIER_SYSTEM, "value": plan["id"]}


def token(identifier: dict[str, str]) -> str:
    return f"{identifier['system']}|{identifier['value']}"


def assessment_identifier(response: dict[str, Any] | None, response_id: str) -> dict[str, str]:
    """The assessment's own identifier when it carries one, else ours (the id it is stored under here)."""
    own = (response or {}).get("identifier") or {}
    if isinstance(own, dict) and own.get("value"):
        return {k: own[k] for k in ("system", "value") if own.get(k)}
    return {"system": ASSESSMENT_ID_SYSTEM, "value": response_id}


class ReferenceRewriter:
    """Turns our references into ones that mean the same thing on the EHR (see the module docstring)."""

    def __init__(self, *, assessments: dict[str, dict[str, str]], delivered_plans: dict[str, str]) -> None:
        self.assessments = assessments
        """QuestionnaireResponse id -> identifier to use."""
        self.delivered_plans = delivered_plans
        """Our CarePlan id -> the EHR's CarePlan id."""

    def rewrite(self, node: Any) -> Any:
        """A copy of `node` with each of its references rewritten."""
        return map_references(node, self._reference)

    def _reference(self, ref: dict[str, Any], reference: str) -> dict[str, Any]:
        if reference.startswith(("#", "urn:")) or "://" in reference or reference.count("/") != 1:
            return ref
        resource_type, resource_id = reference.split("/")
        if resource_type in EHR_OWNED_TYPES:
            return ref
        logical = {k: v for k, v in ref.items() if k not in ("reference", "identifier", "type")}
        logical["type"] = resource_type
        if resource_type == "CarePlan":
            logical["identifier"] = {"system": PLAN_IDENTIFIER_SYSTEM, "value": resource_id}
            if resource_id in self.delivered_plans:
                logical["reference"] = f"CarePlan/{self.delivered_plans[resource_id]}"
        elif resource_type == "QuestionnaireResponse":
            logical["identifier"] = self.assessments.get(
                resource_id, {"system": ASSESSMENT_ID_SYSTEM, "value": resource_id})
            logical.setdefault("display", "Scar assessment")
        else:
            logical["identifier"] = {"system": f"{CATALOG_IDENTIFIER_BASE}{resource_type}", "value": resource_id}
        return _ordered_reference(logical)


def _ordered_reference(ref: dict[str, Any]) -> dict[str, Any]:
    order = ("reference", "type", "identifier", "display")
    return {k: ref[k] for k in order if k in ref} | {k: v for k, v in ref.items() if k not in order}


def ehr_careplan(plan: dict[str, Any], rewriter: ReferenceRewriter, *, ehr_id: str | None = None) -> dict[str, Any]:
    """The CarePlan as the EHR should store it: our id and meta dropped (the EHR assigns its own), refs rewritten."""
    body = rewriter.rewrite({k: v for k, v in plan.items() if k not in ("id", "meta")})
    head: dict[str, Any] = {"resourceType": "CarePlan"}
    if ehr_id is not None:
        head["id"] = ehr_id
    return head | {k: v for k, v in body.items() if k != "resourceType"}


def practitioner_of(plan: dict[str, Any], assessment: dict[str, Any] | None) -> dict[str, Any] | None:
    """The requesting practitioner, when the plan or its assessment names one."""
    candidates = [plan.get("author"), *(plan.get("contributor") or []), (assessment or {}).get("author")]
    for candidate in candidates:
        reference = (candidate or {}).get("reference") if isinstance(candidate, dict) else None
        if isinstance(reference, str) and reference.startswith(("Practitioner/", "PractitionerRole/")):
            return {"reference": reference}
    return None


def provenance(*, target: str, delivery_id: str, operation: str, recorded: datetime,
               practitioner: dict[str, Any] | None, assessment: dict[str, Any] | None,
               protocol: str | None) -> dict[str, Any]:
    """Who produced what the EHR now holds, from what; tagged with the delivery id for `_tag=` idempotency."""
    agents: list[dict[str, Any]] = [{
        "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "assembler", "display": "Assembler"}]},
        "who": SERVICE_DEVICE,
    }]
    if practitioner is not None:
        agents.append({"type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "author", "display": "Author"}]},
                       "who": practitioner})
    entities: list[dict[str, Any]] = []
    if assessment is not None:
        entities.append({"role": "source", "what": assessment})
    if protocol:
        entities.append({"role": "derivation", "what": protocol_reference(protocol)})
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "meta": {"tag": [{"system": SUBMISSION_TAG_SYSTEM, "code": delivery_id}]},
        "target": [{"reference": target}],
        "recorded": recorded.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "activity": {"coding": [{"system": DATA_OPERATION, "code": operation}]},
        "agent": agents,
    }
    if entities:
        resource["entity"] = entities
    return resource


def protocol_reference(protocol: str) -> dict[str, Any]:
    """The protocol (a canonical `url|version`) as a logical PlanDefinition reference."""
    url, _, version = protocol.partition("|")
    return {"type": "PlanDefinition", "identifier": {"system": "urn:ietf:rfc:3986", "value": url},
            "display": f"Protocol {url}" + (f" version {version}" if version else "")}


def provenance_tag(delivery_id: str) -> str:
    """The token (system|code) tagging this delivery's Provenance."""
    return f"{SUBMISSION_TAG_SYSTEM}|{delivery_id}"


def provenance_search(delivery_id: str) -> str:
    """The `ifNoneExist` / If-None-Exist query that finds this delivery's Provenance."""
    return f"_tag={provenance_tag(delivery_id)}"


def transaction(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def post_entry(resource: dict[str, Any], *, full_url: str, if_none_exist: str | None) -> dict[str, Any]:
    request = {"method": "POST", "url": resource["resourceType"]}
    if if_none_exist:
        request["ifNoneExist"] = if_none_exist
    return {"fullUrl": full_url, "resource": resource, "request": request}


def put_entry(resource: dict[str, Any], *, if_match: str | None) -> dict[str, Any]:
    request: dict[str, Any] = {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
    if if_match:
        request["ifMatch"] = f'W/"{if_match}"'
    return {"fullUrl": f"{resource['resourceType']}/{resource['id']}", "resource": resource, "request": request}


# ------------------------------------------------------------------- document


def document_identifier(plan: dict[str, Any], version: int) -> dict[str, str]:
    """Version-specific: the document's masterIdentifier for one plan version (found again by `identifier`)."""
    return {"system": DOCUMENT_ID_SYSTEM, "value": f"{plan_identifier(plan)['value']}-v{version}"}


def plan_xhtml(plan: dict[str, Any]) -> str:
    """The plan's narrative as a standalone, well-formed XHTML 1.0 Strict document headed by its status.

    XHTML because that is what note-writing EHRs file (Oracle Health Millennium takes XHTML documents
    only; https://docs.oracle.com/en/industries/health/millennium-platform-apis/mfrap/op-documentreference-post.html)
    and because the narrative (`text.div`) is XHTML already."""
    title = escape(plan.get("title", "Care plan"))
    period = plan.get("period") or {}
    status = escape(plan.get("status", "unknown"))
    div = (plan.get("text") or {}).get("div", "")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
            '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n'
            f'<html xmlns="{XHTML_NAMESPACE}" xml:lang="en" lang="en"><head><title>{title}</title></head><body>'
            f"<h1>{title}</h1><p>Status: <b>{status}</b>; period {escape(period.get('start', '?'))} to "
            f"{escape(period.get('end', '?'))}.</p>{div}</body></html>")


def document_reference(plan: dict[str, Any], *, version: int, recorded: datetime, replaces: str | None,
                       practitioner: dict[str, Any] | None, related: list[dict[str, Any]],
                       us_core: bool) -> dict[str, Any]:
    """The plan version as one clinical note: a single XHTML attachment, the plan's identity in the
    DocumentReference's own fields (masterIdentifier: this version; identifier and context.related: the
    plan), every date with a time, status current, docStatus final, a LOINC type, the practitioner as
    author when one is known. `related`: the assessment and protocol, so nothing is lost without a
    Provenance. With `us_core`, the US Core DocumentReference profile's clinical-note category and claim."""
    identifier = plan_identifier(plan)
    created = recorded.isoformat(timespec="seconds").replace("+00:00", "Z")
    document: dict[str, Any] = {"resourceType": "DocumentReference"}
    if us_core:
        document["meta"] = {"profile": [US_CORE_DOCUMENT]}
    document |= {
        "masterIdentifier": document_identifier(plan, version),
        "identifier": [identifier],
        "status": "current",
        "docStatus": "final",
        "type": {"coding": [PLAN_OF_CARE_NOTE], "text": "Scar treatment plan"},
    }
    if us_core:
        document["category"] = [{"coding": [CLINICAL_NOTE]}]
    document |= {
        "subject": copy.deepcopy(plan.get("subject")),
        "date": created,
        "author": [practitioner] if practitioner else None,
        "description": f"{plan.get('title', 'Care plan')} ({plan.get('status', 'unknown')}), version {version}",
        "relatesTo": [{"code": "replaces", "target": {"reference": replaces}}] if replaces else None,
        "content": [{"attachment": {"contentType": XHTML, "language": "en",
                                    "data": _b64(plan_xhtml(plan).encode()),
                                    "title": plan.get("title", "Care plan"), "creation": created}}],
        "context": {"related": [{"type": "CarePlan", "identifier": identifier, "display": "Care plan"}, *related]},
    }
    return {k: v for k, v in document.items() if v}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# ------------------------------------------------------------------- US Core


def us_core_careplan(careplan: dict[str, Any]) -> dict[str, Any]:
    """The CarePlan as the US Core CarePlan profile wants it: the claim, category assess-plan, a narrative
    with a status (https://hl7.org/fhir/us/core/StructureDefinition-us-core-careplan.html)."""
    out = dict(careplan)
    meta = dict(out.get("meta") or {})
    meta["profile"] = [*meta.get("profile", []), US_CORE_CAREPLAN]
    out["meta"] = meta
    categories = list(out.get("category") or [])
    if not any(c.get("system") == ASSESS_PLAN["system"] and c.get("code") == ASSESS_PLAN["code"]
               for category in categories for c in category.get("coding", [])):
        categories.insert(0, {"coding": [ASSESS_PLAN]})
    out["category"] = categories
    if not (out.get("text") or {}).get("status"):
        title = escape(out.get("title", "Care plan"))
        out["text"] = {"status": "generated", "div": f'<div xmlns="{XHTML_NAMESPACE}"><p>{title} '
                                                      f'({escape(out.get("status", "unknown"))})</p></div>'}
    return _resource_order(out)


def _resource_order(resource: dict[str, Any]) -> dict[str, Any]:
    order = ("resourceType", "id", "meta", "text", "contained")
    return {k: resource[k] for k in order if k in resource} | {k: v for k, v in resource.items() if k not in order}
