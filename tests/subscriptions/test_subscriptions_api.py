"""Topics, Subscription create/read/search/delete, the handshake and $status, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from tests.subscriptions.conftest import IG, JSON, TOPIC, notify, row, subscribe, subscription

pytestmark = pytest.mark.sandbox

TOPICS = ("careplan-created", "careplan-status-changed", "careplan-delivery-failed", "careplan-delivery-completed")


def test_topics_are_basic_resources_with_patient_and_category_filters(api, r4_validator):
    bundle = api.get("/fhir/Basic").json()
    r4_validator.assert_valid(bundle)
    topics = {entry["resource"]["id"]: entry["resource"] for entry in bundle["entry"]}
    assert sorted(topics) == sorted(TOPICS)
    for topic_id, basic in topics.items():
        assert basic["code"]["coding"] == [{"system": "http://hl7.org/fhir/fhir-types", "code": "SubscriptionTopic"}]
        xver = "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic."
        [url] = [e["valueUri"] for e in basic["extension"] if e["url"] == xver + "url"]
        assert url == TOPIC + topic_id
        filters = [next(p["valueString"] for p in e["extension"] if p["url"] == "filterParameter")
                   for e in basic["extension"] if e["url"] == xver + "canFilterBy"]
        assert filters == ["patient", "category"]
        assert api.get(f"/fhir/Basic/{topic_id}").json() == basic
    assert api.get("/fhir/Basic/unknown").status_code == 404


def test_capability_statement_lists_every_topic_and_the_subscription_operations(api, r4_validator):
    statement = api.get("/fhir/metadata").json()
    r4_validator.assert_valid(statement)
    [entry] = [r for r in statement["rest"][0]["resource"] if r["type"] == "Subscription"]
    canonicals = [e["valueCanonical"] for e in entry["extension"]
                  if e["url"] == "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
                                 "capabilitystatement-subscriptiontopic-canonical"]
    assert canonicals == [TOPIC + t for t in TOPICS]
    assert entry["profile"] == IG + "backport-subscription"
    assert {op["name"] for op in entry["operation"]} == {"status", "events"}


def test_new_subscription_is_requested_then_active_after_the_handshake(api, engine, settings, receiver,
                                                                        r4_validator):
    created = subscribe(api, subscription("careplan-created", receiver.url(),
                                          headers=["Authorization: Bearer receiver-secret"]))
    r4_validator.assert_valid(created)
    assert created["status"] == "requested"
    assert created["channel"]["header"] == ["Authorization: (hidden)"]  # a secret is never read back

    notify(settings, engine)

    [handshake] = receiver.of_kind("handshake")
    r4_validator.assert_valid(handshake.bundle)
    assert handshake.bundle["type"] == "history"
    assert handshake.subscription == created["id"]
    assert handshake.parameter("events-since-subscription-start") == "0"
    assert handshake.headers["authorization"] == "Bearer receiver-secret"
    assert handshake.headers["content-type"] == "application/fhir+json"
    read = api.get(f"/fhir/Subscription/{created['id']}")
    assert read.json()["status"] == "active"
    assert read.headers["etag"] == 'W/"2"'
    status = api.get(f"/fhir/Subscription/{created['id']}/$status").json()
    r4_validator.assert_valid(status)
    parameters = {p["name"]: p for p in status["entry"][0]["resource"]["parameter"]}
    assert parameters["status"]["valueCode"] == "active"
    assert parameters["type"]["valueCode"] == "query-status"
    assert parameters["topic"]["valueCanonical"] == TOPIC + "careplan-created"


def test_a_subscription_that_is_not_r4_is_400(api, receiver, r4_validator):
    resource = subscription("careplan-created", receiver.url())
    resource["channel"]["header"] = "Authorization: Bearer x"  # a string where R4 has a list
    response = api.post("/fhir/Subscription", headers=JSON, json=resource)
    assert response.status_code == 400
    r4_validator.assert_valid(response.json())
    ends_vaguely = subscription("careplan-created", receiver.url()) | {"end": "2027"}  # R4: an instant
    assert api.post("/fhir/Subscription", headers=JSON, json=ends_vaguely).status_code == 400


def test_search_and_delete(api, engine, receiver, r4_validator):
    first = subscribe(api, subscription("careplan-created", receiver.url()))
    second = subscribe(api, subscription("careplan-delivery-failed", receiver.url("other")))

    found = api.get("/fhir/Subscription", params={"criteria": TOPIC + "careplan-delivery-failed"}).json()
    r4_validator.assert_valid(found)
    assert [e["resource"]["id"] for e in found["entry"]] == [second["id"]]
    assert api.get("/fhir/Subscription", params={"status": "requested"}).json()["total"] == 2

    assert api.delete(f"/fhir/Subscription/{first['id']}").status_code == 204
    assert api.get(f"/fhir/Subscription/{first['id']}").status_code == 410
    assert api.get("/fhir/Subscription").json()["total"] == 1
    assert row(engine, first["id"]).status == "off"


@pytest.mark.parametrize(("endpoint", "why"), [
    ("http://hooks.example.org/notify", "https"),
    ("https://hooks.example.org/notify", "CAREPLAN_SUBSCRIPTION_ENDPOINTS"),
    ("http://user:pw@127.0.0.1:{port}/hook", "credentials"),
    ("ftp://127.0.0.1:{port}/hook", "https"),
])
def test_endpoints_must_be_https_or_loopback_and_allow_listed(api, receiver, endpoint, why, r4_validator):
    response = api.post("/fhir/Subscription", headers=JSON,
                        json=subscription("careplan-created", endpoint.format(port=receiver.port)))
    assert response.status_code == 422
    r4_validator.assert_valid(response.json())
    assert why in response.json()["issue"][0]["diagnostics"]


def test_an_allow_listed_prefix_does_not_admit_a_longer_host_or_a_sibling_path(database_url, ehr_sandbox,
                                                                                receiver):
    from services.careplan.subscriptions.resource import check_endpoint
    from services.fhir.outcome import Unprocessable

    prefixes = ["https://hooks.example.org/cicatrix/"]
    assert check_endpoint("https://hooks.example.org/cicatrix/plans", prefixes=prefixes, loopback_http=False)
    for sneaky in ("https://hooks.example.org.evil.test/cicatrix/plans", "https://hooks.example.org/cicatrix-x",
                   "https://hooks.example.org:8443/cicatrix/plans", "http://hooks.example.org/cicatrix/plans"):
        with pytest.raises(Unprocessable):
            check_endpoint(sneaky, prefixes=prefixes, loopback_http=True)


@pytest.mark.parametrize(("change", "where"), [
    (lambda s: s.update(criteria=TOPIC + "nothing-like-this"), "criteria"),
    (lambda s: s["channel"].update(type="websocket"), "channel.type"),
    (lambda s: s["_criteria"]["extension"][0].update(valueString="CarePlan?status=active"), "criteria"),
    (lambda s: s["channel"]["_payload"]["extension"][0].update(valueCode="everything"), "payload"),
    (lambda s: s["channel"].update(header=["Host: evil.test"]), "header"),
    (lambda s: s["channel"]["extension"].append({"url": IG + "backport-heartbeat-period", "valueUnsignedInt": 0}),
     "channel"),
    (lambda s: s["channel"].update(endpoint="http://127.0.0.1:99999/hook"), "endpoint"),
])
def test_subscriptions_the_service_cannot_honour_are_422(api, receiver, change, where, r4_validator):
    resource = subscription("careplan-created", receiver.url(), filters="CarePlan?patient=Patient/p1")
    change(resource)
    response = api.post("/fhir/Subscription", headers=JSON, json=resource)
    assert response.status_code == 422, response.text
    r4_validator.assert_valid(response.json())
    assert where in response.json()["issue"][0]["expression"][0]
