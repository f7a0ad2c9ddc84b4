"""CDS Hooks figure (9): a hook call with complete prefetch, as an EHR makes it, against the 500 ms it may take.

Every call carries its own signed JWT (ES384, a fresh `jti`: the service refuses replays), so the figure
includes what trusting the EHR costs. The calls are a mix: `patient-view` for assessments without a plan
(the service plans, as `$apply` does), `patient-view` with an active plan, and `order-sign` with a retinoid
for a pregnant patient and with a peel on a day of the plan's mesotherapy. Each round sends a fixed number
of calls: tokens cannot be reused, so the load generator's cycling must never come round again.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from tests.bench import careplan, stack
from tests.bench.measure import Figure, alternate, http_load, ok_statuses

ISSUER = "https://ehr.bench.invalid"
BASE = "https://careplan.bench.invalid"
CALLS_PER_ROUND = 400
LOINC = "http://loinc.org"


class Ehr:
    """The EHR's signing key, and the settings that make the care-plan service trust it."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP384R1())
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        self.jwks = {"keys": [public | {"kid": "bench-1", "use": "sig", "alg": "ES384"}]}

    def token(self, service: str) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": f"{BASE}/cds-services/{service}", "iat": now, "exp": now + 300,
                  "jti": str(uuid.uuid4())}
        return jwt.encode(claims, self.key, algorithm="ES384", headers={"kid": "bench-1", "typ": "JWT"})


@contextmanager
def trusted_ehr() -> Iterator[tuple[Ehr, dict[str, str]]]:
    """An EHR and the care-plan settings trusting it (the JWK Set in a temporary file)."""
    ehr = Ehr()
    path = stack.write_json(ehr.jwks)
    try:
        yield ehr, {"CAREPLAN_CDS_AUTH": "jwt", "CAREPLAN_CDS_ISSUER": ISSUER, "CAREPLAN_CDS_JWKS_FILE": path,
                    "CAREPLAN_CDS_BASE_URL": BASE}
    finally:
        stack.remove(path)


def _searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources]}


def _pregnant(patient: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": "pregnancy", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "82810-3"}]}, "subject": {"reference": patient},
            "effectiveDateTime": "2026-11-30T09:00:00Z",
            "valueCodeableConcept": {"coding": [{"system": LOINC, "code": "LA15173-0", "display": "Pregnant"}]}}


def _active_plan(server: stack.Server, assessment: dict[str, Any], patient: str) -> dict[str, Any]:
    parameters = {"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueReference": {"reference": patient}},
        {"name": "data", "resource": {"resourceType": "Bundle", "type": "collection",
                                      "entry": [{"resource": assessment}]}},
        {"name": "start", "valueDate": (date.today() + timedelta(days=7)).isoformat()}]}
    response = httpx.post(f"{server.base}/fhir/PlanDefinition/$apply", json=parameters,
                          headers={"Content-Type": "application/fhir+json"}, timeout=30)
    response.raise_for_status()
    return response.json() | {"id": "bench-plan", "status": "active"}


def _assessment(templates: list[dict[str, Any]], n: int, label: str) -> dict[str, Any]:
    parameters = careplan.assessment(templates, n, f"cds-{label}")["parameter"]
    return copy.deepcopy(next(p["resource"] for p in parameters if p["name"] == "assessment"))


def calls(server: stack.Server, ehr: Ehr, count: int, label: str) -> list[dict[str, Any]]:
    """`count` hook calls, each with complete prefetch and a token of its own."""
    templates = careplan.examples()
    plan_patient = f"Patient/bench-cds-{label}-plan"
    base_assessment = _assessment(templates, 0, label)
    plan = _active_plan(server, base_assessment | {"subject": {"reference": plan_patient}}, plan_patient)
    meso = next(a["detail"]["scheduledTiming"]["event"][1] for a in plan["activity"]
                if "/mesotherapy|" in a["detail"].get("instantiatesCanonical", [""])[0]
                and not a["detail"].get("doNotPerform"))
    requests = []
    for n in range(count):
        kind = n % 6
        patient = plan_patient if kind in (3, 5) else f"Patient/bench-cds-{label}-{n}"
        assessment = _assessment(templates, n, label)
        assessment["subject"] = {"reference": patient}
        prefetch = {"assessment": _searchset(assessment), "carePlans": None, "allergies": None, "pregnancy": None,
                    "breastfeeding": None}
        context: dict[str, Any] = {"userId": "Practitioner/bench", "patientId": patient.split("/", 1)[1]}
        service, hook = "scar-plan", "patient-view"
        if kind == 3:
            prefetch["carePlans"] = _searchset(plan)
        elif kind == 4:
            service, hook = "scar-order-safety", "order-sign"
            prefetch["pregnancy"] = _searchset(_pregnant(patient))
            context["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {
                "resourceType": "MedicationRequest", "id": "rx", "status": "draft", "intent": "order",
                "subject": {"reference": patient}, "medicationCodeableConcept": {
                    "coding": [{"system": "http://www.whocc.no/atc", "code": "D10AD01"}],
                    "text": "Tretinoin 0.05% cream"}}}]}
        elif kind == 5:
            service, hook = "scar-order-safety", "order-sign"
            prefetch["carePlans"] = _searchset(plan)
            context["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {
                "resourceType": "ServiceRequest", "id": "sr", "status": "draft", "intent": "order",
                "subject": {"reference": patient}, "occurrenceDateTime": meso[:10], "code": {"coding": [
                    {"system": "https://fhir.cicatrix.org/CodeSystem/scar-modality", "code": "aha-peel"}],
                    "text": "AHA peel"}}}]}
        body = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context, "prefetch": prefetch}
        requests.append({"method": "POST", "path": f"/cds-services/{service}",
                         "headers": {"Content-Type": "application/json",
                                     "Authorization": f"Bearer {ehr.token(service)}"},
                         "body": json.dumps(body)})
    return requests


def figure_hooks(server: stack.Server, ehr: Ehr, *, rounds: int, calls_per_round: int = CALLS_PER_ROUND) -> Figure:
    """Figure 9: CDS Hooks calls with complete prefetch, 8 connections; next to bare Starlette's stored answer."""
    probe = stack.load(server.port, calls(server, ehr, 6, "probe"), connections=1, total=6)
    ok_statuses(probe)
    card = httpx.post(f"http://127.0.0.1:{server.port}/cds-services/scar-order-safety", timeout=30,
                      content=calls(server, ehr, 5, "card")[4]["body"],
                      headers={"Content-Type": "application/json",
                               "Authorization": f"Bearer {ehr.token('scar-order-safety')}"}).content
    batches = iter(calls(server, ehr, calls_per_round, f"r{i}") for i in range(rounds))
    bare_calls = [{"method": "POST", "path": "/fhir/cds-services/scar-order-safety",
                   "headers": {"Content-Type": "application/json"}, "body": r["body"]}
                  for r in calls(server, ehr, 60, "bare")]
    with stack.baseline("bare", {"/fhir/cds-services/scar-order-safety": card}) as bare:
        runs = alternate({
            "cicatrix": lambda: stack.load(server.port, next(batches), connections=8, total=calls_per_round,
                                           pid=server.process.pid),
            "bare": http_load(bare, bare_calls, connections=8, seconds=2.0)}, rounds)
    ok_statuses(runs["cicatrix"])
    ok_statuses(runs["bare"])
    run = runs["cicatrix"]
    cpu = f"; {run['cpu_us'] / 1000:,.1f} ms server CPU/call" if run.get("cpu_us") else ""
    return Figure("9", "CDS Hooks call with complete prefetch (patient-view planning, order-sign screening; "
                       "signed JWT each), 8 connections, one process",
                  f"{run['rps']:,.0f} calls/s (p50 {run['p50_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms{cpu})",
                  f"bare Starlette answering the same POSTs with a stored card: {runs['bare']['rps']:,.0f} req/s",
                  runs["paired"]["ratio"], "p99 < 500 ms", run["p99_ms"] < 500, raw=runs)
