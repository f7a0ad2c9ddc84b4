"""The request plan follows the EHR's CapabilityStatement: only declared requests, documented fallbacks.

The property test drives the real `Sender` through a first delivery, an ambiguous resend and a later
version against an in-memory EHR that declares a random subset of capabilities and records every
request it would have to refuse; the plan must either send nothing undeclared or say, in plain words,
which capability is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.careplan.delivery.capabilities import read_capabilities
from services.careplan.delivery.ehr_client import EhrClient
from services.careplan.delivery.request_plan import (
    DOCUMENT,
    INDIVIDUAL,
    REPLACE,
    TRANSACTION,
    UPDATE,
    CannotDeliver,
    PlanSelector,
    plan_requests,
)
from services.careplan.delivery.sending import Job, Prior, Sender
from tests.delivery.factories import careplan

INTERACTIONS = ("create", "update", "read", "search-type")
SEARCHES = ("identifier", "patient", "type", "_tag", "target")
TYPES = ("CarePlan", "DocumentReference", "Provenance")
US_CORE_DOCUMENT = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-documentreference"


def statement(system=(), resources=None, common=()) -> dict[str, Any]:
    """A CapabilityStatement; `resources`: type -> (interactions, search params, conditionalCreate[, profiles])."""
    entries = []
    for kind, (interactions, params, conditional, *profiles) in (resources or {}).items():
        entry = {"type": kind, "interaction": [{"code": c} for c in interactions], "versioning": "versioned-update",
                 "conditionalCreate": conditional, "searchParam": [{"name": p, "type": "token"} for p in params]}
        if profiles and profiles[0]:
            entry["supportedProfile"] = list(profiles[0])
        entries.append(entry)
    return {"resourceType": "CapabilityStatement", "status": "active", "kind": "instance", "fhirVersion": "4.0.1",
            "format": ["json"], "rest": [{"mode": "server", "interaction": [{"code": c} for c in system],
                                          "searchParam": [{"name": p, "type": "token"} for p in common],
                                          "resource": entries}]}


HAPI_LIKE = statement(["transaction", "batch"], {
    kind: (INTERACTIONS, SEARCHES, True) for kind in TYPES})
DOCUMENTS_ONLY = statement([], {
    "DocumentReference": (("create", "update", "read", "search-type"), ("patient", "type"), False),
    "CarePlan": (("read", "search-type"), ("patient",), False),
    "Provenance": (("read", "search-type"), ("target",), False)})
NOTE_WRITER = statement([], {
    "DocumentReference": (("create", "read", "search-type"), ("identifier", "patient"), False, [US_CORE_DOCUMENT])})
CAREPLANS_ONE_AT_A_TIME = statement([], {
    "CarePlan": (("create", "update", "read", "search-type"), ("identifier", "patient"), False)})


def test_a_full_server_gets_a_transaction_with_conditional_creates_and_a_tagged_provenance():
    plan = plan_requests(read_capabilities(HAPI_LIKE))

    assert (plan.shape, plan.conditional_create, plan.lookup.params) == (TRANSACTION, True, ("identifier",))
    assert (plan.provenance.if_none_exist, plan.provenance.lookup) == (True, "_tag")
    assert plan.fallbacks == () and plan.cannot_create is None and plan.cannot_update is None


def test_a_document_only_ehr_gets_documents_found_by_patient_and_type_without_provenance():
    plan = plan_requests(read_capabilities(DOCUMENTS_ONLY))

    assert (plan.shape, plan.conditional_create, plan.document_versions) == (DOCUMENT, False, UPDATE)
    assert plan.lookup.params == ("patient", "type") and not plan.lookup.exact
    assert plan.provenance is None
    assert any("declares no Provenance create" in text for text in plan.fallbacks)
    assert any("no `identifier` search on DocumentReference" in text for text in plan.fallbacks)


def test_a_note_writer_without_update_replaces_documents_and_follows_us_core():
    plan = plan_requests(read_capabilities(NOTE_WRITER))

    assert (plan.shape, plan.document_versions, plan.us_core_document) == (DOCUMENT, REPLACE, True)
    assert plan.lookup.exact and plan.provenance is None


def test_careplans_one_at_a_time_are_searched_before_each_create():
    plan = plan_requests(read_capabilities(CAREPLANS_ONE_AT_A_TIME))

    assert (plan.shape, plan.conditional_create, plan.lookup.exact) == (INDIVIDUAL, False, True)
    assert plan.provenance is None and plan.cannot_update is None
    assert ("before every create", "GET CarePlan?identifier=<…>") in plan.requests()


def test_provenance_is_found_by_target_when_tag_search_is_not_declared():
    caps = statement([], {"CarePlan": (INTERACTIONS, ("identifier",), True),
                          "Provenance": (("create", "search-type"), ("target",), True)})

    plan = plan_requests(read_capabilities(caps))

    assert (plan.provenance.if_none_exist, plan.provenance.lookup) == (False, "target")
    assert any("no `_tag` search on Provenance" in text for text in plan.fallbacks)


def test_an_ehr_that_takes_nothing_names_what_is_missing():
    plan = plan_requests(read_capabilities(statement([], {"CarePlan": (("read",), (), False)})))

    assert plan.shape is None
    assert "no CarePlan create is declared" in plan.cannot_create
    assert "no DocumentReference create is declared" in plan.cannot_create


def test_an_ehr_speaking_only_xml_gets_nothing_and_is_told_why():
    caps = HAPI_LIKE | {"format": ["xml", "application/fhir+xml"]}

    plan = plan_requests(read_capabilities(caps))

    assert plan.shape is None and "no JSON format is declared (only xml, application/fhir+xml)" in plan.cannot_create


def test_a_configured_shape_is_only_used_when_declared():
    assert plan_requests(read_capabilities(HAPI_LIKE), "individual").shape == INDIVIDUAL
    refused = plan_requests(read_capabilities(CAREPLANS_ONE_AT_A_TIME), "transaction")
    assert refused.shape is None and "no `transaction` interaction is declared" in refused.cannot_create


def test_the_model_reads_search_params_at_rest_level_profiles_and_the_smart_token_url():
    caps = statement([], {"CarePlan": (("create", "search-type"), (), False)}, common=("identifier",))
    caps["rest"][0]["security"] = {"extension": [{
        "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
        "extension": [{"url": "token", "valueUri": "https://auth.example.org/token"}]}]}
    caps["patchFormat"] = ["application/json-patch+json"]

    model = read_capabilities(caps)

    assert model.searches("CarePlan", "identifier") and not model.searches("Provenance", "identifier")
    assert model.token_url == "https://auth.example.org/token"
    assert model.patch_formats == ("application/json-patch+json",)


# ----------------------------------------------------------------- property


class DeclaringEhr:
    """An in-memory EHR that answers every request and records each one its statement does not declare."""

    def __init__(self, capabilities: dict[str, Any]) -> None:
        self.statement = capabilities
        self.model = read_capabilities(capabilities)
        self.undeclared: list[str] = []
        self.held: dict[str, dict[str, Any]] = {}

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/fhir").strip("/")
        if path == "metadata":
            return httpx.Response(200, json=self.statement)
        parts = path.split("/") if path else []
        body = json.loads(request.content) if request.content else None
        if request.method == "POST" and not parts:
            if "transaction" not in self.model.system:
                self.undeclared.append("transaction")
            entries = []
            for entry in body["entry"]:
                self._check_write(entry["request"]["method"], entry["request"]["url"].split("/")[0],
                                  entry["request"].get("ifNoneExist"))
                entries.append({"response": {"status": "201", "location": self._store(entry["resource"])}})
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response",
                                             "entry": entries})
        kind = parts[0]
        if request.method == "GET" and len(parts) == 1:
            self._check("search-type", kind)
            for name, _ in parse_qsl(request.url.query.decode()):
                if not self.model.searches(kind, name):
                    self.undeclared.append(f"search {kind}?{name}")
            held = [{"resource": r} for key, r in self.held.items() if key.startswith(f"{kind}/")]
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": held})
        if request.method == "GET":
            self._check("read", kind)
            held = self.held.get(f"{kind}/{parts[1]}", {"resourceType": kind, "id": parts[1]})
            return httpx.Response(200, json=held | {"meta": {"versionId": "1"}})
        self._check_write(request.method, kind, request.headers.get("if-none-exist"))
        stored = self._store(body)
        return httpx.Response(201 if request.method == "POST" else 200, headers={"Location": stored})

    def _check(self, interaction: str, kind: str) -> None:
        if not self.model.can(kind, interaction):
            self.undeclared.append(f"{interaction} {kind}")

    def _check_write(self, method: str, kind: str, if_none_exist: str | None) -> None:
        self._check("create" if method == "POST" else "update", kind)
        if if_none_exist:
            names = [name for name, _ in parse_qsl(if_none_exist)]
            if not self.model.conditional_create(kind, *names):
                self.undeclared.append(f"If-None-Exist {kind}?{','.join(names)}")

    def _store(self, resource: dict[str, Any]) -> str:
        ident = resource.get("id") or uuid.uuid4().hex[:8]
        self.held[f"{resource['resourceType']}/{ident}"] = resource | {"id": ident}
        return f"{resource['resourceType']}/{ident}/_history/1"


def job(*, ambiguous: bool, prior: Prior | None = None, delivery_id: str = "d-1") -> Job:
    plan = careplan("plan-1") | {"id": "plan-1", "meta": {"versionId": "2" if prior else "1"}}
    return Job(delivery_id=delivery_id, careplan_id="plan-1", version=2 if prior else 1, attempt=2,
               ambiguous=ambiguous, plan=plan, prior=prior, prior_plan=plan if prior else None)


def deliver(ehr: DeclaringEhr, attempt: Job) -> None:
    async def go() -> None:
        client = EhrClient("https://ehr.example.org/fhir", transport=httpx.MockTransport(ehr.handle))
        try:
            await Sender(client, PlanSelector("auto", refresh_seconds=60)).deliver(attempt)
        finally:
            await client.close()

    asyncio.run(go())


RESOURCE_CAPS = st.tuples(st.sets(st.sampled_from(INTERACTIONS)), st.sets(st.sampled_from(SEARCHES)), st.booleans())
CAPABILITIES = st.builds(
    lambda system, resources, common: statement(sorted(system), resources, sorted(common)),
    st.sets(st.sampled_from(["transaction", "batch"])),
    st.dictionaries(st.sampled_from(TYPES), RESOURCE_CAPS.map(lambda t: (sorted(t[0]), sorted(t[1]), t[2]))),
    st.sets(st.sampled_from(["_tag", "identifier"]), max_size=1))


@settings(max_examples=int(os.environ.get("CICATRIX_FUZZ_EXAMPLES", "0") or 0) or 80, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(capabilities=CAPABILITIES, ambiguous=st.booleans())
def test_any_capability_statement_gives_only_declared_requests_or_names_the_missing_capability(capabilities,
                                                                                              ambiguous):
    plan = plan_requests(read_capabilities(capabilities))
    ehr = DeclaringEhr(capabilities)

    if plan.shape is None:
        with pytest.raises(CannotDeliver, match="declare"):
            deliver(ehr, job(ambiguous=ambiguous))
        assert "create is declared" in plan.cannot_create or "neither conditional create nor a search" in (
            plan.cannot_create)
    else:
        deliver(ehr, job(ambiguous=ambiguous))
        deliver(ehr, job(ambiguous=True))  # the answer was lost: the resend searches first
        held = "DocumentReference" if plan.shape == DOCUMENT else "CarePlan"
        prior = Prior(1, plan.shape, held, "e1", "1")
        later = job(ambiguous=ambiguous, prior=prior, delivery_id="d-2")
        if held == "CarePlan" and plan.cannot_update:
            with pytest.raises(CannotDeliver, match="CarePlan update"):
                deliver(ehr, later)
        else:
            deliver(ehr, later)
            deliver(ehr, job(ambiguous=True, prior=prior, delivery_id="d-2"))
    assert ehr.undeclared == []
