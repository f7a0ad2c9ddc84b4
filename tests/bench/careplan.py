"""Care-plan figures: `$generate` (4); the care-plan halves of growth (6) and memory (7) use these requests.

Assessments are varied: the shipped example assessments (atrophic, hypotrophic, striae; allergies,
pregnancy, declined modalities, visible vessels) with a new patient, assessment identifier, scar age and
start date each, so that every request is a new assessment (201) and none is answered from the
idempotency record.
"""

from __future__ import annotations

import copy
import json
from datetime import date, timedelta
from typing import Any

from tests.bench import stack
from tests.bench.measure import Figure, alternate, http_load, ok_statuses, throughput

EXAMPLES = stack.ROOT / "contracts" / "fhir" / "examples"
GENERATE = "/fhir/CarePlan/$generate"


def examples() -> list[dict[str, Any]]:
    """The example assessments that produce a plan (not the refused keloid one)."""
    return [json.loads(p.read_text()) for p in sorted(EXAMPLES.glob("*.parameters.json"))
            if (p.parent / p.name.replace(".parameters.json", ".careplan.json")).exists()]


def assessment(templates: list[dict[str, Any]], n: int, label: str) -> dict[str, Any]:
    """The n-th varied $generate Parameters."""
    body = copy.deepcopy(templates[n % len(templates)])
    patient = f"Patient/bench-{label}-{n}"
    for parameter in body["parameter"]:
        if parameter["name"] == "subject":
            parameter["valueReference"] = {"reference": patient}
        elif parameter["name"] == "start":
            parameter["valueDate"] = (date(2027, 1, 4) + timedelta(days=n % 90)).isoformat()
        elif parameter["name"] == "assessment":
            response = parameter["resource"]
            response["id"] = f"bench-{label}-{n}"
            response["identifier"] = {"system": "https://hospital.example/assessments", "value": f"{label}-{n}"}
            response["subject"] = {"reference": patient}
            for item in response["item"]:
                if item["linkId"] == "scar-age-months":
                    item["answer"] = [{"valueInteger": 3 + n % 40}]
    return body


def generate_requests(count: int, label: str) -> list[dict[str, Any]]:
    templates = examples()
    return [{"method": "POST", "path": GENERATE, "headers": {"Content-Type": "application/fhir+json"},
             "body": json.dumps(assessment(templates, n, label))} for n in range(count)]


def figure_generate(careplan: stack.Server, *, rounds: int, seconds: float, workers: int,
                    expected_rate: float = 400) -> Figure:
    """Figure 4: $generate, 16 connections, varied assessments, delivery off; next to the bare app's answer.

    `workers` is the server's CAREPLAN_WORKERS (it only labels the figure and keeps its assessments apart from
    another run's on the same database, so that every request creates a plan)."""
    per_round = int(expected_rate * (seconds + 1.5)) + 200
    label = f"w{workers}"
    sample = stack.load(careplan.port, generate_requests(1, f"{label}-probe"), connections=1, total=1)
    ok_statuses(sample, ("201",))
    with stack.baseline("bare", {GENERATE: _one_plan(careplan, label)}) as bare:
        batches = iter(generate_requests(per_round, f"{label}-r{i}") for i in range(rounds))
        runs = alternate({
            "cicatrix": lambda: stack.load(careplan.port, next(batches), connections=16, seconds=seconds, warmup=1.0,
                                           pid=careplan.process.pid),
            "bare": http_load(bare, generate_requests(200, "bare"), connections=16, seconds=seconds)}, rounds)
    ok_statuses(runs["cicatrix"], ("201",))
    ok_statuses(runs["bare"])
    run = runs["cicatrix"]
    met = run["rps"] >= 250 and run["p99_ms"] < 100
    cpu = f"; {run['cpu_us'] / 1000:,.1f} ms server CPU/plan" if run.get("cpu_us") else ""
    processes = "one process" if workers == 1 else f"{workers} worker processes"
    return Figure("4", f"`CarePlan/$generate`, 16 connections, varied assessments, delivery off, {processes}",
                  f"{run['rps']:,.0f} plans/s (p50 {run['p50_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms{cpu})",
                  f"bare Starlette answering the same POSTs with a stored plan: {runs['bare']['rps']:,.0f} req/s",
                  runs["paired"]["ratio"], ">= 250 plans/s, p99 < 100 ms", met, raw=runs)


def figure_reads(careplan: stack.Server, catalog: stack.Server, activity_ids: list[str], *, rounds: int,
                 seconds: float) -> Figure:
    """Figure 8: care-plan reads by id at 4 connections beside the catalog's cached reads.

    Patient data is never cached: each read is a database read and an AuditEvent. The ratio is the catalog's p50
    over the care plans' p50 (above 1 is better), and the target is that a plan read takes at most twice as long."""
    generated = generate_requests(40, "reads")
    for request in generated:
        created = stack.load(careplan.port, [request], connections=1, total=1)
        ok_statuses(created, ("201", "200"))
    from services.careplan.careplan_builder import plan_identifier

    ids = [plan_identifier(f"https://hospital.example/assessments|reads-{n}", f"Patient/bench-reads-{n}")
           for n in range(40)]
    plans = [stack.get(f"/fhir/CarePlan/{i}") for i in ids]
    catalog_reads = [stack.get(f"/fhir/ActivityDefinition/{i}") for i in activity_ids]
    runs = alternate({"careplan": http_load(careplan, plans, connections=4, seconds=seconds),
                      "catalog": http_load(catalog, catalog_reads, connections=4, seconds=seconds)}, rounds)
    ok_statuses(runs["careplan"])
    ok_statuses(runs["catalog"])
    ratio = runs["catalog"]["p50_ms"] / runs["careplan"]["p50_ms"]
    return Figure("8", "Care-plan read by id, 4 connections (database read and AuditEvent per read)",
                  throughput(runs["careplan"]), "catalog read by id from its cache, 4 connections: " +
                  throughput(runs["catalog"]), ratio, ">= 0.5 (p50 at most 2x the catalog's)", ratio >= 0.5,
                  note="ratio of p50 latencies", raw=runs)


def _one_plan(careplan: stack.Server, label: str) -> bytes:
    import httpx

    response = httpx.post(careplan.base + GENERATE, json=assessment(examples(), 0, f"{label}-sample"),
                          headers={"Content-Type": "application/fhir+json"}, timeout=30)
    response.raise_for_status()
    return response.content


def memory_requests() -> list[dict[str, Any]]:
    """The care-plan memory workload: 1 in 40 requests a new assessment; the rest read those plans by id,
    search them by patient (ids only) and read the CapabilityStatement. On later passes the assessments are
    resubmissions, answered with the plan already made (200)."""
    from services.careplan.careplan_builder import plan_identifier

    generated = generate_requests(50, "memory")
    ids = [plan_identifier(f"https://hospital.example/assessments|memory-{n}", f"Patient/bench-memory-{n}")
           for n in range(50)]
    requests: list[dict[str, Any]] = []
    for n, generate in enumerate(generated):
        requests.append(generate)
        for k in range(13):
            earlier = (n - 1 - k % max(n, 1)) % 50 if n else 0
            requests.append(stack.get(f"/fhir/CarePlan/{ids[earlier]}") if n else stack.get("/fhir/metadata"))
            requests.append(stack.get(f"/fhir/CarePlan?subject=Patient/bench-memory-{earlier}&_elements=id"))
            requests.append(stack.get("/fhir/metadata"))
    return requests
