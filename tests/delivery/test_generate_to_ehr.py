"""End to end: `$generate` on the care-plan API, the embedded dispatcher, the plan in the EHR (valid R4, once)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.careplan.examples import EXAMPLES_DIR
from tests.delivery.conftest import FAST
from tests.support.apps import careplan_app, catalog_app, running
from tests.support.servers import serve

pytestmark = pytest.mark.sandbox

FHIR_JSON = {"content-type": "application/fhir+json"}


@pytest.fixture(scope="module")
def catalog_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder: Path = tmp_path_factory.mktemp("catalog")
    with serve(catalog_app(f"sqlite:///{folder}/catalog.db", LOG_LEVEL="WARNING")) as url:
        yield url + "/fhir"


def completed_tasks(client, plan_id: str, count: int, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        tasks = [e["resource"] for e in client.get("/fhir/Task", params={"focus": f"CarePlan/{plan_id}"}).json()
                 .get("entry", [])]
        if len([t for t in tasks if t["status"] == "completed"]) >= count:
            return tasks
        assert time.monotonic() < deadline, tasks
        time.sleep(0.05)


@pytest.mark.parametrize("profile", ["hapi", "oracle-millennium"])
def test_a_generated_plan_reaches_the_ehr_once_and_valid(database_url, catalog_url, ehr_sandbox, r4_validator,
                                                         profile):
    ehr_sandbox.configure(profile=profile)
    parameters = json.loads((EXAMPLES_DIR / "atrophic-chest-visible-vessels.parameters.json").read_text())
    settings = FAST | {"DISPATCHER": "embedded", "CATALOG_URL": catalog_url, "EHR_BASE_URL": ehr_sandbox.base_url}
    with running(careplan_app(database_url, **settings)) as client:
        created = client.post("/fhir/CarePlan/$generate", json=parameters, headers=FHIR_JSON)
        assert created.status_code == 201, created.text
        plan = created.json()
        again = client.post("/fhir/CarePlan/$generate", json=parameters, headers=FHIR_JSON)
        assert again.status_code == 200 and again.json()["id"] == plan["id"]
        [task] = completed_tasks(client, plan["id"], 1)
    r4_validator.assert_valid(task)

    if profile == "hapi":
        [stored] = ehr_sandbox.store("CarePlan")
        assert stored["identifier"] == plan["identifier"]
        assert stored["activity"] and len(stored["activity"]) == len(plan["activity"])
        assert not any(o.get("type", {}).get("coding", [{}])[0].get("code") == "read-back-dropped"
                       for o in task["output"])
    else:
        [stored] = ehr_sandbox.store("DocumentReference")
        [content] = stored["content"]
        assert plan["title"] in base64.b64decode(content["attachment"]["data"]).decode()
        assert stored["identifier"] == plan["identifier"]
    r4_validator.assert_valid(stored)
    assert ehr_sandbox.refusals() == []
    [request] = [r for r in ehr_sandbox.requests() if r["method"] in ("POST", "PUT") and r["path"].startswith("/fhir")
                 and r["path"] != "/fhir/Provenance"]
    r4_validator.assert_valid(request["body"])
    for provenance in ehr_sandbox.store("Provenance"):
        r4_validator.assert_valid(provenance)
    assert len(ehr_sandbox.store("Provenance")) == (1 if profile == "hapi" else 0)  # Millennium takes none
