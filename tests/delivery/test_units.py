"""The delivery code's own logic, without an EHR: backoff, Retry-After, the error tree, diffs, references."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.careplan.delivery.auth import SigningKey, SmartBackendAuth
from services.careplan.delivery.ehr_client import EhrClient, parse_location
from services.careplan.delivery.errors import EhrRejected, EhrTransportError
from services.careplan.delivery.payloads import ReferenceRewriter, ehr_careplan
from services.careplan.delivery.readback import dropped_elements, element_paths
from services.careplan.delivery.retry import RetryPolicy, backoff_seconds, parse_retry_after
from services.careplan.delivery.sending import Delivered, reapply
from tests.delivery.factories import careplan
from tests.delivery.keys import ec_key

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


# ------------------------------------------------------------------ retries


def test_backoff_doubles_with_jitter_between_half_and_full_step_and_is_capped():
    rng = random.Random(7)
    for attempt, step in [(1, 2.0), (2, 4.0), (3, 8.0), (10, 60.0)]:
        delays = [backoff_seconds(attempt, base=2.0, cap=60.0, rng=rng) for _ in range(200)]
        assert step / 2 <= min(delays) and max(delays) <= step
        assert max(delays) - min(delays) > step / 4  # really jittered


def test_retry_after_reads_seconds_and_http_dates():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Sun, 01 Mar 2026 12:00:30 GMT", now=NOW) == 30.0
    assert parse_retry_after("Sun, 01 Mar 2026 11:00:00 GMT", now=NOW) == 0.0  # in the past: no wait
    assert parse_retry_after("later") is None
    assert parse_retry_after(None) is None


def test_retry_after_is_a_floor_and_the_bounds_give_up():
    policy = RetryPolicy(max_attempts=3, max_age=timedelta(minutes=10), base=1.0, cap=4.0)

    assert policy.next_attempt(attempts=1, window_start=NOW, now=NOW, retry_after=90) == NOW + timedelta(seconds=90)
    assert policy.next_attempt(attempts=3, window_start=NOW, now=NOW) is None  # attempts used up
    late = NOW + timedelta(minutes=9, seconds=59)
    assert policy.next_attempt(attempts=1, window_start=NOW, now=late, retry_after=5) is None  # past max age


# --------------------------------------------------------------- EHR client


def client_for(handler) -> EhrClient:
    return EhrClient("https://ehr.example.org/fhir", transport=httpx.MockTransport(handler))


def outcome(text: str) -> dict:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid",
                                                          "diagnostics": text}]}


@pytest.mark.parametrize("raised, ambiguous", [
    (httpx.ConnectError("refused"), False),
    (httpx.ConnectTimeout("slow connect"), False),
    (httpx.ReadTimeout("slow answer"), True),
    (httpx.RemoteProtocolError("server disconnected"), True),
])
def test_transport_failures_become_ehr_transport_errors(raised, ambiguous):
    def handler(request: httpx.Request) -> httpx.Response:
        raise raised

    with pytest.raises(EhrTransportError) as caught:
        asyncio.run(client_for(handler).request("POST", "", body={"resourceType": "Bundle"}))

    assert caught.value.retryable and caught.value.ambiguous is ambiguous
    assert isinstance(caught.value.__cause__, httpx.HTTPError)


@pytest.mark.parametrize("status, retryable, ambiguous", [
    (400, False, False), (404, False, False), (409, False, False), (412, False, False), (422, False, False),
    (408, True, False), (429, True, False), (500, True, True), (502, True, True), (503, True, True),
    (504, True, True),
])
def test_statuses_become_ehr_rejected_with_the_outcome_and_retry_after(status, retryable, ambiguous):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=outcome("no"), headers={"Retry-After": "3"})

    with pytest.raises(EhrRejected) as caught:
        asyncio.run(client_for(handler).request("GET", "CarePlan"))

    error = caught.value
    assert (error.status, error.retryable, error.ambiguous, error.retry_after) == (status, retryable, ambiguous, 3.0)
    assert error.outcome == outcome("no") and error.diagnostics() == "no"


def test_a_401_fetches_one_new_token_and_retries_once():
    key = SigningKey(ec_key(), "k1", "ES384")
    seen = {"token": 0, "fhir": []}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            seen["token"] += 1
            return httpx.Response(200, json={"access_token": f"t{seen['token']}", "expires_in": 300})
        seen["fhir"].append(request.headers["authorization"])
        return httpx.Response(401 if request.headers["authorization"] == "Bearer t1" else 200, json={})

    client = client_for(handler)
    client.auth = SmartBackendAuth(client_id="c", key=key, scope="system/CarePlan.crus",
                                   fhir_base=client.base_url, token_url="https://ehr.example.org/token")
    asyncio.run(client.request("GET", "CarePlan"))

    assert seen == {"token": 2, "fhir": ["Bearer t1", "Bearer t2"]}


def test_the_token_url_comes_from_the_capability_statement_when_smart_discovery_is_missing():
    key = SigningKey(ec_key(), "k1", "ES384")
    token_posts: list[str] = []
    security = {"extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                               "extension": [{"url": "token", "valueUri": "https://auth.example.org/token"}]}]}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/.well-known/smart-configuration"):
            return httpx.Response(404, json={})
        if request.url.path.endswith("/metadata"):
            assert "authorization" not in request.headers  # read without credentials, as SMART allows
            return httpx.Response(200, json={"resourceType": "CapabilityStatement",
                                             "rest": [{"mode": "server", "security": security}]})
        if request.url.host == "auth.example.org":
            token_posts.append(str(request.url))
            return httpx.Response(200, json={"access_token": "t", "expires_in": 300})
        return httpx.Response(200, json={})

    client = client_for(handler)
    client.auth = SmartBackendAuth(client_id="c", key=key, scope="system/CarePlan.crus", fhir_base=client.base_url)
    asyncio.run(client.request("GET", "CarePlan"))

    assert token_posts == ["https://auth.example.org/token"]


def test_the_client_assertion_has_the_claims_smart_requires():
    key = ec_key()
    auth = SmartBackendAuth(client_id="cicatrix", key=SigningKey(key, "k1", "ES384"), scope="s",
                            fhir_base="https://ehr.example.org/fhir")
    url = "https://ehr.example.org/auth/token"

    first, second = auth.assertion(url), auth.assertion(url)

    header = jwt.get_unverified_header(first)
    claims = jwt.decode(first, key.public_key(), algorithms=["ES384"], audience=url)
    assert header["alg"] == "ES384" and header["kid"] == "k1"
    assert claims["iss"] == claims["sub"] == "cicatrix"
    assert 0 < claims["exp"] - time.time() <= 300
    assert claims["jti"] != jwt.decode(second, key.public_key(), algorithms=["ES384"], audience=url)["jti"]


def test_httpcore_asks_for_its_async_library_without_searching_sys_path(monkeypatch):
    """sniffio is a dependency (pyproject.toml): httpcore's import of it, several per request, is a lookup."""
    import importlib.machinery

    asyncio.run(_async_library())  # the first import
    searched: list[str] = []
    find_spec = importlib.machinery.PathFinder.find_spec

    def counting(name, *args, **kwargs):
        searched.append(name)
        return find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.machinery.PathFinder, "find_spec", counting)

    assert asyncio.run(_async_library()) == "asyncio"
    assert searched == []  # httpcore runs this several times per request: it must not hit the file system


async def _async_library() -> str:
    from httpcore._synchronization import current_async_library

    return current_async_library()


def test_locations_are_read_relative_or_absolute():
    assert parse_location("CarePlan/812/_history/1") == ("CarePlan", "812", "1")
    assert parse_location("https://ehr.example.org/fhir/CarePlan/812/_history/3") == ("CarePlan", "812", "3")
    assert parse_location("https://ehr.example.org/fhir/CarePlan/812") == ("CarePlan", "812", None)


# -------------------------------------------------------------- what is sent


def test_references_the_ehr_cannot_resolve_become_logical_references():
    plan = careplan("plan-1", assessment_id="qr-1") | {"id": "plan-1", "meta": {"versionId": "2"},
                                                         "replaces": [{"reference": "CarePlan/plan-0"}]}
    rewriter = ReferenceRewriter(assessments={"qr-1": {"system": "https://h.example/a", "value": "A1"}},
                                 delivered_plans={"plan-0": "ehr-77"})

    sent = ehr_careplan(plan, rewriter)

    assert "id" not in sent and "meta" not in sent
    assert sent["subject"] == {"reference": "Patient/p1"}  # the EHR's own patient: unchanged
    assert sent["goal"] == [{"reference": "#goal-smooth"}]
    assert sent["supportingInfo"] == [{"type": "QuestionnaireResponse", "display": "Scar assessment",
                                       "identifier": {"system": "https://h.example/a", "value": "A1"}}]
    assert sent["replaces"] == [{"reference": "CarePlan/ehr-77", "type": "CarePlan",
                                 "identifier": {"system": "https://fhir.cicatrix.org/careplan-id",
                                                "value": "plan-0"}}]
    assert sent["activity"][0]["detail"]["productReference"] == {
        "type": "Medication", "identifier": {"system": "https://fhir.cicatrix.org/Medication",
                                             "value": "mederma-gel"}, "display": "Mederma gel"}


def test_the_plan_as_sent_is_valid_r4(r4_validator):
    plan = careplan("plan-1", assessment_id="qr-1")
    r4_validator.assert_valid(ehr_careplan(plan, ReferenceRewriter(assessments={}, delivered_plans={})))


def test_read_back_names_the_elements_the_ehr_dropped():
    sent = careplan("p")
    stored = careplan("p") | {"id": "x", "meta": {"versionId": "1"}}
    del stored["activity"][0]["detail"]["scheduledTiming"]["event"]
    stored.pop("contained")

    dropped = dropped_elements(sent, stored)

    assert "CarePlan.contained[0].description.text" in dropped
    assert "CarePlan.activity[0].detail.scheduledTiming.event[5]" in dropped
    assert dropped_elements(sent, sent | {"id": "x", "meta": {}}) == []


class FakeEhr:
    """An EHR over httpx.MockTransport that advertises transactions and conditional create and records requests.

    `representation`: whether the transaction-response entries carry the stored resources (as a server
    honouring `Prefer: return=representation` does); `keeps`: the CarePlan elements it stores."""

    def __init__(self, *, representation: bool, keeps: Callable[[dict], dict]) -> None:
        self.representation = representation
        self.keeps = keeps
        self.requests: list[httpx.Request] = []
        self.stored: dict | None = None

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path.removeprefix("/fhir")
        if path == "/metadata":
            return httpx.Response(200, json={"resourceType": "CapabilityStatement", "rest": [{
                "mode": "server", "interaction": [{"code": "transaction"}], "resource": [
                    {"type": t, "interaction": [{"code": "create"}, {"code": "read"}, {"code": "search-type"}],
                     "conditionalCreate": True, "searchParam": [{"name": p, "type": "token"} for p in params]}
                    for t, params in (("CarePlan", ["identifier"]), ("Provenance", ["_tag"]))]}]})
        if request.method == "POST" and path == "":
            return httpx.Response(200, json=self._transaction(json.loads(request.content)))
        if request.method == "GET" and path == "/CarePlan/ehr-1" and self.stored:
            return httpx.Response(200, json=self.stored, headers={"ETag": 'W/"1"'})
        return httpx.Response(404, json=outcome(f"nothing at {path}"))

    def _transaction(self, bundle: dict) -> dict:
        plan, provenance = (entry["resource"] for entry in bundle["entry"])
        self.stored = self.keeps(plan) | {"id": "ehr-1", "meta": {"versionId": "1"}}
        entries = []
        for kind, resource in (("CarePlan", self.stored), ("Provenance", provenance | {"id": "prov-1"})):
            entry = {"response": {"status": "201 Created", "location": f"{kind}/{resource['id']}/_history/1"}}
            if self.representation:
                entry["resource"] = resource
            entries.append(entry)
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}


def deliver_to(ehr: FakeEhr) -> Delivered:
    from services.careplan.delivery.request_plan import PlanSelector
    from services.careplan.delivery.sending import Job, Sender

    plan = careplan("plan-1") | {"id": "plan-1", "meta": {"versionId": "1"}}
    job = Job(delivery_id="d-1", careplan_id="plan-1", version=1, attempt=1, ambiguous=False, plan=plan)
    client = EhrClient("https://ehr.example.org/fhir", transport=httpx.MockTransport(ehr.handle))
    return asyncio.run(Sender(client, PlanSelector("auto", refresh_seconds=60)).deliver(job))


def without_goals(plan: dict) -> dict:
    return {k: v for k, v in plan.items() if k not in ("contained", "goal")}


def test_read_back_compares_the_resource_the_transaction_answered_with():
    ehr = FakeEhr(representation=True, keeps=without_goals)

    delivered = deliver_to(ehr)

    assert [(r.method, r.url.path) for r in ehr.requests] == [("GET", "/fhir/metadata"), ("POST", "/fhir")]
    assert ehr.requests[1].headers["prefer"] == "return=representation"
    assert "CarePlan.contained[0].description.text" in delivered.readback
    assert "CarePlan.goal[0].reference" in delivered.readback
    assert (delivered.ehr_id, delivered.ehr_version) == ("ehr-1", "1")


def test_read_back_reads_the_plan_when_the_answer_does_not_carry_it():
    ehr = FakeEhr(representation=False, keeps=without_goals)

    delivered = deliver_to(ehr)

    assert [(r.method, r.url.path) for r in ehr.requests][1:] == [("POST", "/fhir"), ("GET", "/fhir/CarePlan/ehr-1")]
    assert "CarePlan.goal[0].reference" in delivered.readback


def test_read_back_is_empty_when_the_ehr_kept_everything():
    delivered = deliver_to(FakeEhr(representation=True, keeps=lambda plan: plan))

    assert delivered.readback == []


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["a", "b", ""]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from("abcd"), children, max_size=3),
    max_leaves=12)
RESOURCES = st.dictionaries(st.sampled_from(["status", "note", "goal", "id", "meta"]), JSON_VALUES, max_size=4)


@settings(max_examples=300, deadline=None)
@given(sent=RESOURCES, stored=RESOURCES)
def test_read_back_names_exactly_the_leaf_paths_the_stored_copy_lacks(sent, stored):
    def paths(resource):
        return element_paths({k: v for k, v in resource.items() if k not in ("id", "meta")}, "CarePlan")

    sent, stored = {"resourceType": "CarePlan"} | sent, {"resourceType": "CarePlan"} | stored

    assert dropped_elements(sent, stored) == sorted(paths(sent) - paths(stored))
    assert dropped_elements(sent, sent) == []


def test_a_412_reapplies_only_our_change_onto_the_ehr_copy():
    before = {"resourceType": "CarePlan", "id": "e1", "status": "draft", "title": "T", "note": [{"text": "a"}]}
    desired = before | {"status": "active"}
    theirs = before | {"description": "nurse edit", "meta": {"versionId": "2"}}

    merged = reapply(theirs, before, desired)

    assert merged == {"resourceType": "CarePlan", "id": "e1", "status": "active", "title": "T",
                      "note": [{"text": "a"}], "description": "nurse edit"}
    assert reapply(merged, before, desired) is None  # already applied: nothing to send


def test_tls_is_verified_against_the_configured_ca_bundle(tmp_path):
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    from services.careplan.delivery.ehr_client import ssl_context

    key = ec_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Hospital test CA")])
    now = datetime.now(UTC)
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(key, hashes.SHA384()))
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    context = ssl_context(bundle)

    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "Hospital test CA"),),)]
