"""Building CDS Hooks calls for tests: the EHR's signed JWT, hook bodies, prefetch Bundles, patient data,
and the CDS Hooks 2.0 JSON shapes (schemas/) every answer is checked against."""

from __future__ import annotations

import copy
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema_rs
from fastapi.testclient import TestClient
from httpx import Response

from services.careplan.examples import EXAMPLES_DIR
from tests.security.issuer import Issuer

SCHEMAS = Path(__file__).parent / "schemas"
BASE_URL = "https://careplan.hospital.test"
EHR_ISSUER = "https://ehr.hospital.test"
PATIENT = "p1"
LOINC = "http://loinc.org"


class Shapes:
    """The CDS Hooks 2.0 JSON shapes, written from the specification (see each schema's $comment)."""

    def __init__(self) -> None:
        common = json.loads((SCHEMAS / "common.schema.json").read_text())
        registry = jsonschema_rs.Registry([(common["$id"], common)])
        self.validators = {name: jsonschema_rs.validator_for(json.loads((SCHEMAS / f"{name}.schema.json")
                                                                        .read_text()), registry=registry)
                           for name in ("discovery", "request", "response", "feedback")}

    def check(self, name: str, value: Any) -> Any:
        errors = [f"{e.instance_path}: {e.message}" for e in self.validators[name].iter_errors(value)]
        assert not errors, f"not a CDS Hooks 2.0 {name}: {errors}"
        return value


@dataclass
class Ehr:
    """An EHR calling the care-plan service's CDS services, as CDS Hooks 2.0 says it must."""

    client: TestClient
    issuer: Issuer
    shapes: Shapes

    def token(self, path: str, **claims: Any) -> str:
        claims = {"aud": BASE_URL + path, "jti": str(uuid.uuid4()), "scope": None, "client_id": None,
                  "sub": "ehr-cds-client", **claims}
        return self.issuer.token(alg="ES384", **claims)

    def call(self, service: str, body: dict[str, Any], *, token: str | None = None) -> Response:
        path = f"/cds-services/{service}"
        self.shapes.check("request", body)
        return self.client.post(path, json=body,
                                headers={"Authorization": f"Bearer {token or self.token(path)}"})

    def cards(self, service: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        response = self.call(service, body)
        assert response.status_code == 200, response.text
        return self.shapes.check("response", response.json())["cards"]  # type: ignore[no-any-return]


def hook_body(hook: str, prefetch: dict[str, Any] | None = None, **context: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4()),
                            "context": {"userId": "Practitioner/dr-1", "patientId": PATIENT, **context}}
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources]}


def complete_prefetch(**given: Any) -> dict[str, Any]:
    """Every prefetch key answered; keys not given answer 'no data' (null)."""
    keys = ("assessment", "carePlans", "allergies", "pregnancy", "breastfeeding")
    return {key: given.get(key) for key in keys}


def assessment(example: str = "atrophic-shin-old-no-vessels") -> dict[str, Any]:
    parameters = json.loads((EXAMPLES_DIR / f"{example}.parameters.json").read_text())
    response = copy.deepcopy(next(p["resource"] for p in parameters["parameter"] if p["name"] == "assessment"))
    response["subject"] = {"reference": f"Patient/{PATIENT}"}
    return response


def status_observation(code: str, value: tuple[str, str, str], effective: str = "2026-11-20T10:00:00Z") -> dict[
        str, Any]:
    system, value_code, display = value
    return {"resourceType": "Observation", "id": f"status-{uuid.uuid4().hex[:8]}", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code}]}, "subject": {"reference": f"Patient/{PATIENT}"},
            "effectiveDateTime": effective,
            "valueCodeableConcept": {"coding": [{"system": system, "code": value_code, "display": display}]}}


def pregnancy(pregnant: bool) -> dict[str, Any]:
    value = (LOINC, "LA15173-0", "Pregnant") if pregnant else (LOINC, "LA26683-5", "Not pregnant")
    return status_observation("82810-3", value)


def allergy(text: str) -> dict[str, Any]:
    return {"resourceType": "AllergyIntolerance", "id": f"allergy-{uuid.uuid4().hex[:8]}",
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                                           "code": "active"}]},
            "code": {"text": text}, "patient": {"reference": f"Patient/{PATIENT}"}}


def medication_request(text: str, *codings: dict[str, str], order_id: str = "rx-1") -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "id": order_id, "status": "draft", "intent": "order",
            "medicationCodeableConcept": {"text": text} | ({"coding": list(codings)} if codings else {}),
            "subject": {"reference": f"Patient/{PATIENT}"}}


def service_request(text: str, day: str, *codings: dict[str, str], order_id: str = "sr-1") -> dict[str, Any]:
    return {"resourceType": "ServiceRequest", "id": order_id, "status": "draft", "intent": "order",
            "code": {"text": text} | ({"coding": list(codings)} if codings else {}),
            "subject": {"reference": f"Patient/{PATIENT}"},
            "occurrenceDateTime": day}


def draft_orders(*orders: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": o} for o in orders]}
