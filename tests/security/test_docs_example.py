"""The worked example in the README's Security section works as written: its key, JWK Set and token
commands are run, and its calls go to a care-plan service configured exactly as the example says."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.apps import careplan_app
from tests.support.servers import serve

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "README.md"


def example_blocks() -> list[str]:
    section = DOC.read_text().split("\n## Security\n", 1)[1].split("\n## ", 1)[0]
    worked = section.split("### Worked example", 1)[1]
    return re.findall(r"```sh\n(.*?)```", worked, flags=re.DOTALL)


def bash(script: str, cwd: Path, **env: str) -> str:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PATH": path, **env})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_worked_example_generates_a_plan_with_a_token_and_records_it(tmp_path, catalog_url, r4_validator):
    keys, start, mint, calls = example_blocks()
    token = bash(f"{keys}\n{mint}\necho \"$TOKEN\"", tmp_path).strip().splitlines()[-1]
    assert json.loads((tmp_path / "jwks.json").read_text())["keys"][0]["kid"] == "demo-1"

    settings = dict(re.findall(r"CAREPLAN_(\w+)=(\S+)", start.replace("$PWD", str(tmp_path))))
    assert settings["AUTH_MODE"] == "jwt"
    app = careplan_app(f"sqlite:///{tmp_path}/careplan.db", CATALOG_URL=catalog_url, LOG_LEVEL="WARNING",
                       DISPATCHER="off", **settings)
    with serve(app) as url:
        output = bash(calls.replace("http://127.0.0.1:8082", url), ROOT, TOKEN=token)
        anonymous = bash(f"curl -s -o /dev/null -w '%{{http_code}}' -X POST {url}/fhir/CarePlan/\\$generate", ROOT)
    plan, end = json.JSONDecoder().raw_decode(output)  # curl -s prints the two bodies back to back
    trail = json.loads(output[end:])
    assert plan["resourceType"] == "CarePlan", plan
    r4_validator.assert_valid(trail)
    [event] = [e["resource"] for e in trail["entry"]]
    assert {"what": {"reference": f"CarePlan/{plan['id']}"}}.items() <= event["entity"][0].items()
    assert anonymous == "401"
