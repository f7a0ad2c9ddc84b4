"""The example assessments in `contracts/fhir/examples/` and the plans they produce.

Each `<name>.parameters.json` is a `$generate` request; `<name>.careplan.json` is the
CarePlan it produces (or `<name>.outcome.json`, the OperationOutcome it is refused
with). `cicatrix examples` regenerates the outputs; the test suite regenerates them
in memory and compares, so a change in content or code that changes a plan shows up
as a reviewed diff of these files.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.careplan.careplan_builder import plan_identifier
from services.careplan.generate import CarePlanner
from services.careplan.intake import assessment_key, parse_generate, stored_response_id
from services.careplan.local import local_planner
from services.careplan.settings import CareplanSettings
from services.fhir.outcome import FhirError

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "contracts" / "fhir" / "examples"
CREATED = datetime(2026, 2, 26, 12, 0, tzinfo=UTC)
"""Fixed `CarePlan.created` so regenerated examples compare byte for byte."""

EXAMPLE_SETTINGS = CareplanSettings(CLINIC_DAYS="mon,tue,wed,thu,fri", CLOSED_DATES="2026-12-24,2026-12-31",
                                    MAX_PROCEDURES_PER_DAY=2, MAX_VISITS_PER_WEEK=3, CLINIC_TIMEZONE="Europe/Berlin",
                                    CLINIC_COUNTRY="DE", CLINIC_SUBDIVISION="BE")
"""A Berlin clinic: German and Berlin public holidays, closed on Christmas Eve and New Year's Eve."""


async def plan_example(planner: CarePlanner, parameters: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """('careplan', plan) or ('outcome', OperationOutcome) for one example request."""
    try:
        request = parse_generate(parameters)
        key = assessment_key(request.assessment) or ""
        result = await planner.draft_plan(
            request, status=request.status, identifier=plan_identifier(key, request.subject),
            assessment_reference=f"QuestionnaireResponse/{stored_response_id(request.subject, key)}",
            created=CREATED)
        return "careplan", result.careplan
    except FhirError as error:
        return "outcome", error.operation_outcome()


async def generate_all(directory: Path = EXAMPLES_DIR) -> dict[str, tuple[str, dict[str, Any]]]:
    results = {}
    async with local_planner(EXAMPLE_SETTINGS) as planner:
        for path in sorted(directory.glob("*.parameters.json")):
            name = path.name.removesuffix(".parameters.json")
            results[name] = await plan_example(planner, json.loads(path.read_text()))
    return results


def render(resource: dict[str, Any]) -> str:
    return json.dumps(resource, indent=2, ensure_ascii=False) + "\n"


async def write_all(directory: Path = EXAMPLES_DIR) -> list[Path]:
    written = []
    for name, (kind, resource) in (await generate_all(directory)).items():
        for stale in directory.glob(f"{name}.*.json"):
            if not stale.name.endswith(".parameters.json"):
                stale.unlink()
        target = directory / f"{name}.{kind}.json"
        target.write_text(render(resource))
        written.append(target)
    return written
