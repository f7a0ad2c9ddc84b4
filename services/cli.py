"""The `cicatrix` command.

    cicatrix up                      run catalog, careplan and the EHR sandbox locally
    cicatrix serve catalog|careplan  run one service (uvicorn) with its settings
    cicatrix migrate [SERVICE]       apply database migrations (both services by default)
    cicatrix plan FILE [--start D]   print the plan for an assessment (running stack, or --local)
    cicatrix examples                regenerate contracts/fhir/examples/*.careplan.json
    cicatrix openapi                 regenerate contracts/openapi/<service>.json
    cicatrix dispatch [--drain]      run a CarePlan delivery worker (services/careplan/delivery)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from services.fhir.settings import ServiceSettings

ROOT = Path(__file__).resolve().parent.parent
SANDBOX = ROOT / "tools" / "ehr-sandbox" / "server.js"


def _settings(service: str) -> ServiceSettings:
    if service == "catalog":
        from services.catalog.settings import CatalogSettings
        return CatalogSettings()
    from services.careplan.settings import CareplanSettings
    return CareplanSettings()


def migrate(services: list[str]) -> int:
    from services.fhir.db import make_engine
    for service in services:
        if service == "catalog":
            from services.catalog.app import MIGRATIONS
        else:
            from services.careplan.app import MIGRATIONS
        settings = _settings(service)
        engine = make_engine(settings.DATABASE_URL)
        MIGRATIONS.upgrade(engine)
        engine.dispose()
        print(f"{service}: migrations applied ({MIGRATIONS.head()})")
    return 0


def serve(service: str) -> int:
    import uvicorn
    settings = _settings(service)
    if settings.WORKERS > 1:
        _prepare_once(service, settings)
    uvicorn.run(f"services.{service}.app:app", host=settings.HOST, port=settings.PORT,
                log_level=settings.LOG_LEVEL.lower(), access_log=False, proxy_headers=True,
                workers=settings.WORKERS, http=settings.HTTP, loop=settings.LOOP)
    return 0


def _prepare_once(service: str, settings: ServiceSettings) -> None:
    """With several workers, migrate and load the catalog content here, once, instead of in every worker at the
    same moment; the workers are told (through their environment) that it is done."""
    prefix = service.upper()
    if settings.AUTO_MIGRATE:
        migrate([service])
        os.environ[f"{prefix}_AUTO_MIGRATE"] = "false"
    from services.catalog.settings import CatalogSettings

    if isinstance(settings, CatalogSettings) and settings.LOAD_CONTENT:
        from sqlmodel import Session

        from services.catalog.app import load_shipped_content, make_store
        from services.fhir.db import make_engine

        engine = make_engine(settings.DATABASE_URL)
        with Session(engine) as session:
            load_shipped_content(session, make_store(), settings)
        engine.dispose()
        os.environ["CATALOG_LOAD_CONTENT"] = "false"


def _wait_ready(url: str, process: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {process.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready within {seconds:.0f} s")


def up() -> int:
    """Start the three processes, print where they are, stop them all on Ctrl-C / SIGTERM."""
    node = shutil.which("node")
    if node is None:
        print("Node.js 20+ is required for the EHR sandbox", file=sys.stderr)
        return 1
    (ROOT / "var").mkdir(exist_ok=True)
    env = dict(os.environ)
    catalog, careplan = _settings("catalog"), _settings("careplan")
    sandbox_port = int(env.get("EHR_SANDBOX_PORT", "8090"))
    # The care-plan service follows the catalog and sandbox wherever they were put, unless told otherwise.
    env.setdefault("CAREPLAN_CATALOG_URL", f"http://{catalog.HOST}:{catalog.PORT}/fhir")
    env.setdefault("CAREPLAN_EHR_BASE_URL", f"http://127.0.0.1:{sandbox_port}/fhir")
    specs = [
        ("ehr-sandbox", [node, str(SANDBOX)], {"EHR_SANDBOX_PORT": str(sandbox_port)},
         f"http://127.0.0.1:{sandbox_port}/fhir/metadata"),
        ("catalog", [sys.executable, "-m", "services.cli", "serve", "catalog"], {},
         f"http://{catalog.HOST}:{catalog.PORT}/readyz"),
        # the embedded dispatcher delivers to the sandbox started here, whatever its port
        ("careplan", [sys.executable, "-m", "services.cli", "serve", "careplan"],
         {"CAREPLAN_EHR_BASE_URL": env.get("CAREPLAN_EHR_BASE_URL", f"http://127.0.0.1:{sandbox_port}/fhir")},
         f"http://{careplan.HOST}:{careplan.PORT}/readyz"),
    ]
    processes: list[tuple[str, subprocess.Popen[bytes]]] = []
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for name, command, extra_env, ready_url in specs:
            process = subprocess.Popen(command, cwd=ROOT, env={**env, **extra_env})
            processes.append((name, process))
            _wait_ready(ready_url, process)
        print("\nCicatrix is running:")
        print(f"  catalog      http://{catalog.HOST}:{catalog.PORT}/fhir/metadata")
        print(f"  careplan     http://{careplan.HOST}:{careplan.PORT}/fhir/metadata")
        print(f"  EHR sandbox  http://127.0.0.1:{sandbox_port}/fhir/metadata")
        print("Press Ctrl-C to stop.\n", flush=True)
        while not stopping:
            for name, process in processes:
                if process.poll() is not None:
                    print(f"{name} exited with {process.returncode}; stopping the stack", file=sys.stderr)
                    return 1
            time.sleep(0.3)
        return 0
    except RuntimeError as exc:
        print(f"cicatrix up: {exc}", file=sys.stderr)
        return 1
    finally:
        for _, process in reversed(processes):
            if process.poll() is None:
                process.terminate()
        for _, process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        print("Cicatrix stopped.", flush=True)


def _plan_request(path: Path, start: str | None) -> dict[str, Any]:
    """A file holding $generate Parameters, or a bare QuestionnaireResponse (its subject becomes the subject)."""
    import json

    body: dict[str, Any] = json.loads(path.read_text())
    if body.get("resourceType") == "QuestionnaireResponse":
        subject = (body.get("subject") or {}).get("reference", "Patient/unknown")
        body = {"resourceType": "Parameters", "parameter": [
            {"name": "subject", "valueReference": {"reference": subject}}, {"name": "assessment", "resource": body}]}
    if start:
        body["parameter"] = [p for p in body.get("parameter", []) if p.get("name") != "start"]
        body["parameter"].append({"name": "start", "valueDate": start})
    return body


def plan(path: Path, start: str | None, local: bool) -> int:
    """Print what the plan for an assessment would be: what, when, why ($apply semantics: nothing stored)."""
    import asyncio

    from services.careplan.plan_table import render_plan

    request = _plan_request(path, start)
    if local:
        from services.careplan.examples import plan_example
        from services.careplan.local import local_planner

        async def run() -> tuple[str, dict[str, Any]]:
            async with local_planner() as planner:
                return await plan_example(planner, request)

        kind, resource = asyncio.run(run())
    else:
        settings = _settings("careplan")
        apply_body: dict[str, Any] = {"resourceType": "Parameters", "parameter": []}
        for parameter in request["parameter"]:
            if parameter["name"] == "assessment":
                apply_body["parameter"].append({"name": "data", "resource": {
                    "resourceType": "Bundle", "type": "collection",
                    "entry": [{"resource": parameter["resource"]}]}})
            else:
                apply_body["parameter"].append(parameter)
        url = f"http://{settings.HOST}:{settings.PORT}/fhir/PlanDefinition/$apply"
        try:
            response = httpx.post(url, json=apply_body, headers={"Content-Type": "application/fhir+json"}, timeout=30)
        except httpx.HTTPError as exc:
            print(f"cicatrix plan: cannot reach {url} ({exc}); start the stack with `make up` or use --local",
                  file=sys.stderr)
            return 2
        resource = response.json()
        kind = "careplan" if resource.get("resourceType") == "CarePlan" else "outcome"
    print(render_plan(resource) if kind == "careplan" else _outcome_text(resource))
    return 0 if kind == "careplan" else 1


def _outcome_text(outcome: dict[str, Any]) -> str:
    lines = ["The assessment was refused:"]
    for issue in outcome.get("issue", []):
        where = ", ".join(issue.get("expression", []))
        lines.append(f"  - {issue.get('diagnostics', '')}" + (f"  [{where}]" if where else ""))
    return "\n".join(lines)


def examples() -> int:
    import asyncio

    from services.careplan.examples import write_all

    for path in asyncio.run(write_all()):
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


def openapi_documents() -> dict[str, str]:
    """Each service's OpenAPI document as committed under contracts/openapi (stable key order)."""
    import json

    from services.careplan.app import create_app as careplan_app
    from services.catalog.app import create_app as catalog_app

    return {name: json.dumps(factory().openapi(), indent=2, sort_keys=True) + "\n"
            for name, factory in (("catalog", catalog_app), ("careplan", careplan_app))}


def openapi() -> int:
    for name, document in openapi_documents().items():
        path = ROOT / "contracts" / "openapi" / f"{name}.json"
        path.write_text(document)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cicatrix", description="Cicatrix care-plan services")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="run catalog, careplan and the EHR sandbox locally")
    serve_parser = commands.add_parser("serve", help="run one service")
    serve_parser.add_argument("service", choices=["catalog", "careplan"])
    migrate_parser = commands.add_parser("migrate", help="apply database migrations")
    migrate_parser.add_argument("service", nargs="?", choices=["catalog", "careplan"],
                                help="one service (both when omitted)")
    plan_parser = commands.add_parser("plan", help="print the plan for an assessment")
    plan_parser.add_argument("file", type=Path, help="$generate Parameters or a QuestionnaireResponse (JSON)")
    plan_parser.add_argument("--start", help="first day of treatment (YYYY-MM-DD)")
    plan_parser.add_argument("--local", action="store_true", help="plan in-process, without a running stack")
    commands.add_parser("examples", help="regenerate the example plans in contracts/fhir/examples")
    commands.add_parser("openapi", help="regenerate the OpenAPI documents in contracts/openapi")
    # standalone delivery workers
    dispatch_parser = commands.add_parser("dispatch", help="deliver queued CarePlans to the EHR (a worker)")
    dispatch_parser.add_argument("--drain", action="store_true",
                                 help="exit once no delivery is pending instead of waiting for more")
    args = parser.parse_args(argv)
    if args.command == "dispatch":
        from services.careplan.delivery.standalone import dispatch
        return dispatch(drain=args.drain)
    if args.command == "plan":
        return plan(args.file, args.start, args.local)
    if args.command == "examples":
        return examples()
    if args.command == "openapi":
        return openapi()
    if args.command == "up":
        return up()
    if args.command == "serve":
        return serve(args.service)
    return migrate([args.service] if args.service else ["catalog", "careplan"])


if __name__ == "__main__":
    sys.exit(main())
