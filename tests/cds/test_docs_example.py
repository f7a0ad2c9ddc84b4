"""The worked example in the README's CDS Hooks section works as written: its key, JWK Set and token commands
are run, its call goes to a care-plan service configured exactly as the example says, and the card it shows is
the card the service answers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.security.test_docs_example import bash
from tests.support.apps import careplan_app
from tests.support.servers import serve

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "README.md"


def worked_example() -> str:
    section = DOC.read_text().split("\n## CDS Hooks\n", 1)[1].split("\n## ", 1)[0]
    return section.split("### Worked example", 1)[1]


def without_uuids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_uuids(v) for k, v in value.items() if k != "uuid"}
    if isinstance(value, list):
        return [without_uuids(v) for v in value]
    return value


def test_the_worked_example_signs_a_hook_call_and_gets_the_card_it_shows(tmp_path, catalog_url, shapes):
    example = worked_example()
    keys, start, mint, call = re.findall(r"```sh\n(.*?)```", example, flags=re.DOTALL)
    [shown] = re.findall(r"```json\n(.*?)```", example, flags=re.DOTALL)
    token = bash(f"{keys}\n{mint}\necho \"$TOKEN\"", tmp_path).strip().splitlines()[-1]
    settings = dict(re.findall(r"CAREPLAN_(\w+)=(\S+)", start.replace("$PWD", str(tmp_path))))
    assert settings["CDS_AUTH"] == "jwt"
    app = careplan_app(f"sqlite:///{tmp_path}/careplan.db", CATALOG_URL=catalog_url, LOG_LEVEL="WARNING",
                       DISPATCHER="off", **settings)
    with serve(app) as url:
        local = call.replace("http://127.0.0.1:8082", url)
        answer = json.loads(bash(local, ROOT, TOKEN=token))
        replayed = bash(local.replace("curl -s", "curl -s -o /dev/null -w '%{http_code}'"), ROOT, TOKEN=token)
    shapes.check("response", answer)
    assert without_uuids(answer) == without_uuids(json.loads(shown))
    assert replayed == "401"
