"""The README's Subscriptions worked example works as written: its curl commands go to a served care-plan
service configured as the example says, and its receiver prints the handshake and the notification."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.careplan.conftest import catalog_url  # noqa: F401 - the real catalog the care-plan service reads
from tests.security.test_docs_example import bash
from tests.subscriptions.receiver import Receiver
from tests.support.apps import careplan_app
from tests.support.servers import serve

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "contracts" / "fhir" / "Subscription-careplan-created.json"


def example_blocks() -> list[str]:
    section = (ROOT / "README.md").read_text().split("\n## Subscriptions\n", 1)[1].split("\n## ", 1)[0]
    worked = section.split("### Worked example", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", worked, flags=re.DOTALL)


def test_the_example_subscription_is_valid_r4(r4_validator):
    r4_validator.assert_valid(json.loads(EXAMPLE.read_text()))


def test_the_worked_example_subscribes_and_a_notification_arrives(tmp_path, catalog_url, r4_validator):  # noqa: F811
    start, receive, subscribe, check, generate = example_blocks()
    settings = dict(re.findall(r"CAREPLAN_(\w+)=(\S+)", start))
    assert "--port 9000" in receive and "Subscription-careplan-created.json" in subscribe
    receiver = Receiver(port=0).start()
    app = careplan_app(f"sqlite:///{tmp_path}/careplan.db", CATALOG_URL=catalog_url, LOG_LEVEL="WARNING",
                       SUBSCRIPTION_POLL_SECONDS=0.5, EHR_BASE_URL="http://127.0.0.1:9/fhir",
                       **{k: v.replace("9000", str(receiver.port)) for k, v in settings.items()})
    example = json.loads(EXAMPLE.read_text())
    example["channel"]["endpoint"] = example["channel"]["endpoint"].replace("9000", str(receiver.port))
    (tmp_path / "contracts" / "fhir" / "examples").mkdir(parents=True)
    (tmp_path / "contracts" / "fhir" / "Subscription-careplan-created.json").write_text(json.dumps(example))
    for name in ("atrophic-chest-visible-vessels.parameters.json",):
        (tmp_path / "contracts" / "fhir" / "examples" / name).write_text(
            (ROOT / "contracts" / "fhir" / "examples" / name).read_text())
    try:
        with serve(app) as url:
            created = json.loads(bash(subscribe.replace("http://127.0.0.1:8082", url), tmp_path))
            r4_validator.assert_valid(created)
            receiver.wait_for(lambda: receiver.counts["handshake"] == 1, what="the handshake")
            active = json.loads(bash(check.replace("http://127.0.0.1:8082", url), tmp_path))
            assert [e["resource"]["id"] for e in active["entry"]] == [created["id"]]
            plan = json.loads(bash(generate.replace("http://127.0.0.1:8082", url), tmp_path))
            assert plan["resourceType"] == "CarePlan", plan
            receiver.wait_for(lambda: receiver.counts["event-notification"] == 1, what="the notification")
    finally:
        receiver.stop()
    [got] = receiver.events()
    r4_validator.assert_valid(got.bundle)
    assert got.subscription == created["id"] and got.event_numbers == [1]
    assert got.focus == [f"http://127.0.0.1:8082/fhir/CarePlan/{plan['id']}/_history/1"]
    assert got.headers["authorization"] == "Bearer worklist-inbox-token"
