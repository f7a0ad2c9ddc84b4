"""Figure 10: one plan change notified to a thousand subscriptions.

The care-plan service runs as `cicatrix serve careplan` (notifier embedded, the EHR unreachable so that
plan delivery only retries in the background); the receiver is the tests' loopback receiver in this
process. 1,000 subscriptions to `careplan-created` are created over HTTP and their handshakes waited
for; then one `$generate` is posted and the time is taken from the request until the receiver holds
all 1,000 event notifications (the fan-out is written in the plan's transaction, the notifier sends
SUBSCRIPTION_BATCH_SIZE at once). The baseline is the receiver taking the very 1,000 notification
Bundles posted directly by the load generator with as many connections as the notifier uses.
"""

from __future__ import annotations

import json
import time

import httpx

from tests.bench import careplan, stack
from tests.bench.measure import Figure, ok_statuses
from tests.subscriptions.conftest import subscription
from tests.subscriptions.receiver import Receiver

BATCH = 8  # CAREPLAN_SUBSCRIPTION_BATCH_SIZE (its default)
BOUND_SECONDS = 30.0
"""From the plan change to the last of the 1,000 notifications, on the 2-core machine the bench runs on."""


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}; see bench-results/logs")
        time.sleep(0.01)


def figure_fan_out(catalog_server: stack.Server, *, subscriptions: int, env) -> Figure:  # type: ignore[no-untyped-def]
    name = f"Subscriptions: one plan change notified to {subscriptions:,} subscriptions"
    receiver = Receiver().start()
    try:
        with stack.postgres_schema("subscriptions") as url:
            settings = env(url, catalog_server, CAREPLAN_DISPATCHER="embedded",
                           CAREPLAN_EHR_BASE_URL=f"http://127.0.0.1:{stack.free_port()}/fhir",
                           CAREPLAN_SUBSCRIPTION_ENDPOINTS=receiver.base,
                           CAREPLAN_SUBSCRIPTION_BATCH_SIZE=str(BATCH), CAREPLAN_LOG_LEVEL="WARNING")
            with stack.cicatrix("careplan", settings, name="careplan-subscriptions") as server:
                fhir_json = {"Content-Type": "application/fhir+json"}
                created = stack.load(server.port, [
                    {"method": "POST", "path": "/fhir/Subscription", "headers": fhir_json,
                     "body": json.dumps(subscription("careplan-created", receiver.url(f"s{i}")))}
                    for i in range(subscriptions)], connections=8, total=subscriptions)
                ok_statuses(created, ("201",))
                _wait(lambda: receiver.counts["handshake"] >= subscriptions, 120, "the handshakes")
                _wait(lambda: httpx.get(f"{server.base}/fhir/Subscription", params={
                    "status": "requested", "_count": "0"}).json()["total"] == 0, 30, "every subscription active")
                [request] = careplan.generate_requests(1, "fan-out")
                started = time.monotonic()
                answer = httpx.post(f"{server.base}{request['path']}", content=request["body"],
                                    headers=request["headers"], timeout=30)
                answered = time.monotonic() - started
                if answer.status_code != 201:
                    raise RuntimeError(f"$generate answered {answer.status_code}")
                _wait(lambda: receiver.counts["event-notification"] >= subscriptions, 120, "the notifications")
                seconds = time.monotonic() - started
        bundles = [json.dumps(got.bundle) for got in receiver.events()]
        direct = stack.load(receiver.port, [{"method": "POST", "path": "/direct", "body": body,
                                             "headers": fhir_json}
                                            for body in bundles], connections=BATCH, total=len(bundles))
        ok_statuses(direct)
    finally:
        receiver.stop()
    rate = subscriptions / seconds
    ratio = rate / direct["rps"]
    return Figure("10", name,
                  f"all {subscriptions:,} in {seconds:.2f} s ({rate:,.0f} notifications/s; $generate answered in "
                  f"{answered * 1000:.0f} ms)",
                  f"the receiver taking the same {len(bundles):,} Bundles posted directly ({BATCH} connections): "
                  f"{direct['rps']:,.0f} Bundles/s", ratio, f"all within {BOUND_SECONDS:.0f} s",
                  seconds <= BOUND_SECONDS, raw={"direct": direct, "seconds": seconds})
