"""No PHI in logs: every example assessment, with distinctive names, birth dates and answers injected, goes
through both services (plans generated, read, searched, delivered to the EHR sandbox, refused, crashed), and
not one captured log line or stderr byte carries any of them."""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.careplan.examples import EXAMPLES_DIR
from services.fhir.observability import JsonFormatter
from tests.careplan.conftest import example
from tests.support.apps import FHIR_JSON, careplan_app, catalog_app, running
from tests.support.servers import serve

NAME, FAMILY = "Philomena", "Quarrington-Zweig"
BIRTH_DATE = "1937-11-23"
ALLERGY_TEXT = "Quokka-pollen-extract"
NOTE = "scar beside the Zanzibar-tattoo"
PHI = (NAME, FAMILY, BIRTH_DATE, ALLERGY_TEXT, "Zanzibar", "19371123", "23.11.1937")
EXAMPLES = sorted(path.name.removesuffix(".parameters.json") for path in EXAMPLES_DIR.glob("*.parameters.json"))
FAST_DELIVERY = {"DELIVERY_BACKOFF_SECONDS": 0.05, "DELIVERY_BACKOFF_MAX_SECONDS": 0.2, "DELIVERY_POLL_SECONDS": 0.2,
                 "EHR_CONNECT_TIMEOUT_SECONDS": 1.0, "EHR_TIMEOUT_SECONDS": 2.0}


class Lines(logging.Handler):
    """Every record as the JSON line the services would write (message, extra fields, traceback)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    handler = Lines()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler.lines
    finally:
        root.removeHandler(handler)


def with_phi(parameters: dict[str, Any]) -> dict[str, Any]:
    """The example with a named subject, a contained Patient with a birth date, and identifying free text."""
    parameters = copy.deepcopy(parameters)
    patient = {"resourceType": "Patient", "id": "who", "name": [{"family": FAMILY, "given": [NAME]}],
               "birthDate": BIRTH_DATE}
    for parameter in parameters["parameter"]:
        if parameter["name"] == "subject":
            parameter["valueReference"]["display"] = f"{NAME} {FAMILY} (born {BIRTH_DATE})"
        if parameter["name"] == "assessment":
            assessment = parameter["resource"]
            assessment["contained"] = [patient]
            assessment["source"] = {"reference": "#who", "display": f"{NAME} {FAMILY}"}
            assessment["subject"]["display"] = f"{NAME} {FAMILY}"
            assessment["author"] = {"display": f"Dr. {FAMILY}"}
            for item in assessment.get("item", []):
                item["text"] = NOTE
                if item["linkId"] == "allergy":
                    item["answer"].append({"valueString": ALLERGY_TEXT})
    return parameters


def renamed(parameters: dict[str, Any], suffix: str) -> dict[str, Any]:
    """A new assessment (not a resubmission, which would be answered with the first plan)."""
    for parameter in parameters["parameter"]:
        if parameter["name"] == "assessment":
            parameter["resource"]["id"] += suffix
            parameter["resource"]["identifier"]["value"] += suffix
    return parameters


def unknown_answers(parameters: dict[str, Any]) -> dict[str, Any]:
    """Answers the intake refuses, each carrying PHI."""
    parameters = renamed(with_phi(parameters), "-refused")
    for parameter in parameters["parameter"]:
        if parameter["name"] == "assessment":
            parameter["resource"]["item"] += [
                {"linkId": "patient-name", "answer": [{"valueString": f"{NAME} {FAMILY}"}]},
                {"linkId": "scar-age-months", "answer": [{"valueDate": BIRTH_DATE}]},
            ]
    return parameters


def wait_for_deliveries(client: TestClient, plan_ids: list[str], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    pending = set(plan_ids)
    while pending and time.monotonic() < deadline:
        for plan_id in list(pending):
            tasks = client.get("/fhir/Task", params={"focus": f"CarePlan/{plan_id}"}).json().get("entry", [])
            if tasks and all(t["resource"]["status"] in ("completed", "failed", "cancelled") for t in tasks):
                pending.discard(plan_id)
        time.sleep(0.1)
    assert not pending, f"deliveries still running for {pending}"


def test_no_phi_reaches_any_log_line(tmp_path: Path, ehr_sandbox, log_lines, capfd, monkeypatch):
    with serve(catalog_app(f"sqlite:///{tmp_path}/catalog.db", LOG_LEVEL="DEBUG")) as catalog_root:
        app = careplan_app(f"sqlite:///{tmp_path}/careplan.db", CATALOG_URL=f"{catalog_root}/fhir",
                           EHR_BASE_URL=ehr_sandbox.base_url, LOG_LEVEL="DEBUG", **FAST_DELIVERY)
        with running(app) as careplan, httpx_client(catalog_root) as catalog:
            logging.getLogger().setLevel(logging.DEBUG)
            # one delivery refused by the EHR, one failing transiently: their error paths log too
            ehr_sandbox.queue_fault(action="status", status=422, match={"method": "POST"}, times=1)
            ehr_sandbox.queue_fault(action="status", status=503, match={"method": "POST"}, times=2)
            created = []
            for name in EXAMPLES:
                response = careplan.post("/fhir/CarePlan/$generate", json=with_phi(example(name)), headers=FHIR_JSON)
                assert response.status_code in (201, 422), (name, response.text)
                if response.status_code == 201:
                    created.append(response.json()["id"])
                refused = careplan.post("/fhir/CarePlan/$generate", json=unknown_answers(example(name)),
                                        headers=FHIR_JSON)
                assert refused.status_code in (400, 422)
            assert len(created) >= len(EXAMPLES) - 1
            for plan_id in created:
                assert careplan.get(f"/fhir/CarePlan/{plan_id}").status_code == 200
            careplan.get("/fhir/CarePlan", params={"subject:display": f"{NAME} {FAMILY}", "birthdate": BIRTH_DATE})
            careplan.get(f"/fhir/CarePlan/{NAME}-{FAMILY}")
            careplan.post("/fhir/CarePlan/$generate", content=f'{{"name": "{NAME}", "birthDate": "{BIRTH_DATE}"',
                          headers=FHIR_JSON)
            careplan.post("/fhir/PlanDefinition/$apply", json=with_phi(example(EXAMPLES[0])), headers=FHIR_JSON)
            wait_for_deliveries(careplan, created)

            # an unexpected failure whose message quotes the patient: the traceback is logged, the message not
            planner = app.state.ctx.extras["planner"]

            async def crash(*_: Any, **__: Any) -> None:
                raise ValueError(f"cannot plan for {NAME} {FAMILY}, born {BIRTH_DATE}")

            monkeypatch.setattr(planner, "draft_plan", crash)
            assert careplan.post("/fhir/CarePlan/$generate", json=renamed(with_phi(example(EXAMPLES[1])), "-crash"),
                                 headers=FHIR_JSON).status_code == 500

            # the catalog: searches and writes carrying the same identifying text
            catalog.get("/fhir/Questionnaire", params={"name": NAME, "title": f"{FAMILY} {BIRTH_DATE}"})
            catalog.post("/fhir/Questionnaire", json={"resourceType": "Questionnaire", "status": "draft",
                                                      "title": f"{NAME} {FAMILY} {BIRTH_DATE}"}, headers=FHIR_JSON)
            catalog.post("/fhir/Questionnaire", content=f'{{"resourceType": "{NAME}"', headers=FHIR_JSON)
            catalog.get(f"/fhir/Patient/{NAME}")

    captured = capfd.readouterr()
    lines = log_lines + captured.out.splitlines() + captured.err.splitlines()
    records = [json.loads(line) for line in log_lines]
    assert sum(r["logger"] == "cicatrix.access" for r in records) > 3 * len(EXAMPLES), "both services' requests"
    assert any(r["logger"].startswith("cicatrix.careplan.delivery") for r in records), "delivery logs were captured"
    assert any(r.get("exc", "").startswith("Traceback") for r in records), "the crash was logged with its traceback"
    leaks = [line for line in lines for phi in PHI if phi in line]
    assert not leaks, "PHI in logs:\n" + "\n".join(leaks[:10])


def httpx_client(root: str):  # type: ignore[no-untyped-def]
    import httpx
    return httpx.Client(base_url=root, timeout=10)
