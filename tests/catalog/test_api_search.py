"""Catalog search with FHIR semantics, on SQLite and PostgreSQL.

One app per backend serves the whole module (`module_database_url`) over a small
corpus of ActivityDefinitions and a protocol. Tests that write create their own
resources under names and topics nobody else searches for.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.fhir.searchparams import MAX_COUNT, parse_query
from tests.catalog.factories import (
    TEST_BASE,
    activity_definition,
    create,
    ids,
    link,
    post_entry,
    put,
    transaction,
    unique,
)
from tests.support.r4 import R4Validator

MODALITY = f"{TEST_BASE}/CodeSystem/modality"
OTHER = f"{TEST_BASE}/CodeSystem/other"
TOPIC = f"{TEST_BASE}/CodeSystem/topic"


def topic(code: str) -> list[dict[str, Any]]:
    return [{"coding": [{"system": TOPIC, "code": code}]}]


def coded(system: str | None, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code} if system else {"code": code}]}


# Created in this order, so that name, title and _lastUpdated orders all differ.
CORPUS = [
    ("VacuumMassage", "Vacuum massage", coded(MODALITY, "vacuum")),
    ("Cryomassage", "Cryomassage of the scar", coded(MODALITY, "cryo")),
    ("Phonophoresis", "Phonophoresis with madecassol", coded(None, "phono")),
    ("LaserTherapy", "Therapy with a laser", coded(OTHER, "cryo")),
    ("Mesotherapy", "Mésothérapie", coded(MODALITY, "meso")),
]


@pytest.fixture(scope="module")
def corpus(client: TestClient) -> dict[str, dict[str, Any]]:
    """name -> stored ActivityDefinition, all with the topic `corpus`."""
    stored = {}
    for name, title, code in CORPUS:
        stored[name] = create(client, activity_definition(name, title=title, code=code, topic=topic("corpus"),
                                                          purpose="Not a summary element"))
    return stored


@pytest.fixture(scope="module")
def protocol(client: TestClient, corpus: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A PlanDefinition whose actions (one nested) point at three of the corpus' ActivityDefinitions."""
    def canonical(name: str) -> str:
        return f"{corpus[name]['url']}|1.0.0"
    return create(client, {
        "resourceType": "PlanDefinition", "url": f"{TEST_BASE}/PlanDefinition/protocol", "version": "1.0.0",
        "name": "AtrophicScarProtocol", "status": "active",
        "action": [{"title": "Cold", "definitionCanonical": canonical("Cryomassage")},
                   {"title": "Injections", "definitionCanonical": canonical("Mesotherapy"),
                    "action": [{"title": "Massage", "definitionCanonical": canonical("VacuumMassage")}]}],
    })


def search(client: TestClient, r4_validator: R4Validator, resource_type: str = "ActivityDefinition",
           **params: Any) -> dict[str, Any]:
    """GET a search, check it is a valid searchset, return the Bundle."""
    response = client.get(f"/fhir/{resource_type}", params=params)
    assert response.status_code == 200, response.text
    r4_validator.assert_valid(response.content)
    bundle = response.json()
    assert bundle["type"] == "searchset"
    assert link(bundle, "self")
    return bundle  # type: ignore[no-any-return]


def names(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["name"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def bad_request(response: Any, r4_validator: R4Validator) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    body = response.json()
    r4_validator.assert_valid(body)
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["severity"] == "error"
    return body  # type: ignore[no-any-return]


# ---------------------------------------------------------------------- string


@pytest.mark.parametrize(("value", "expected"), [
    ("cryo", ["Cryomassage"]),
    ("CRYOMASSAGE", ["Cryomassage"]),
    ("massage", []),  # starts-with, not contains
])
def test_string_search_is_a_case_insensitive_starts_with(client, corpus, r4_validator, value, expected):
    assert names(search(client, r4_validator, name=value, topic=f"{TOPIC}|corpus")) == expected


@pytest.mark.parametrize("value", ["mesoth", "MÉSOTHÉR", "Mesotherapie"])
def test_string_search_ignores_accents(client, corpus, r4_validator, value):
    assert names(search(client, r4_validator, title=value)) == ["Mesotherapy"]


def test_exact_modifier_matches_the_whole_string_with_case_and_accents(client, corpus, r4_validator):
    assert names(search(client, r4_validator, **{"title:exact": "Mésothérapie"})) == ["Mesotherapy"]
    assert names(search(client, r4_validator, **{"title:exact": "mésothérapie"})) == []
    assert names(search(client, r4_validator, **{"title:exact": "Mésothér"})) == []


def test_contains_modifier_matches_anywhere_in_the_string(client, corpus, r4_validator):
    found = search(client, r4_validator, **{"title:contains": "MASSAGE"}, _sort="name")
    assert names(found) == ["Cryomassage", "VacuumMassage"]


def test_comma_separated_values_are_alternatives(client, corpus, r4_validator):
    assert names(search(client, r4_validator, name="cryo,vacuum", _sort="name")) == ["Cryomassage", "VacuumMassage"]


# ---------------------------------------------------------------------- token


def test_token_with_system_and_code_matches_only_that_system(client, corpus, r4_validator):
    assert names(search(client, r4_validator, code=f"{MODALITY}|cryo")) == ["Cryomassage"]
    assert names(search(client, r4_validator, code=f"{OTHER}|cryo")) == ["LaserTherapy"]


def test_token_with_a_code_alone_matches_any_system(client, corpus, r4_validator):
    assert names(search(client, r4_validator, code="cryo", _sort="name")) == ["Cryomassage", "LaserTherapy"]


def test_token_with_an_empty_system_matches_only_codes_without_a_system(client, corpus, r4_validator):
    assert names(search(client, r4_validator, code="|phono")) == ["Phonophoresis"]
    assert names(search(client, r4_validator, code="|cryo")) == []


def test_token_with_a_system_and_no_code_matches_every_code_of_that_system(client, corpus, r4_validator):
    found = search(client, r4_validator, code=f"{MODALITY}|", _sort="name")
    assert names(found) == ["Cryomassage", "Mesotherapy", "VacuumMassage"]


def test_id_search_and_its_not_modifier(client, corpus, r4_validator):
    cryo = corpus["Cryomassage"]["id"]
    assert names(search(client, r4_validator, _id=cryo)) == ["Cryomassage"]
    others = search(client, r4_validator, **{"_id:not": cryo}, topic=f"{TOPIC}|corpus")
    assert "Cryomassage" not in names(others) and len(names(others)) == 4


# ---------------------------------------------------------------------- _lastUpdated


@pytest.mark.parametrize(("prefix", "matches"), [
    ("eq", True), ("ge", True), ("le", True), ("gt", False), ("lt", False), ("", True),
])
def test_last_updated_compares_with_the_stored_instant(client, corpus, r4_validator, prefix, matches):
    resource = corpus["Phonophoresis"]
    moment = resource["meta"]["lastUpdated"]
    found = search(client, r4_validator, _id=resource["id"], _lastUpdated=f"{prefix}{moment}")
    assert bool(names(found)) is matches


def test_last_updated_with_a_day_or_a_range(client, corpus, r4_validator):
    resource = corpus["Phonophoresis"]
    stamp = datetime.fromisoformat(resource["meta"]["lastUpdated"].replace("Z", "+00:00"))
    day, after, before = stamp.date().isoformat(), stamp + timedelta(seconds=1), stamp - timedelta(seconds=1)
    assert names(search(client, r4_validator, _id=resource["id"], _lastUpdated=day)) == ["Phonophoresis"]
    window = [f"gt{before.isoformat()}", f"lt{after.isoformat()}"]
    assert names(search(client, r4_validator, _id=resource["id"], _lastUpdated=window)) == ["Phonophoresis"]
    assert names(search(client, r4_validator, _id=resource["id"], _lastUpdated=f"gt{after.isoformat()}")) == []


def test_an_unreadable_date_is_400(client, r4_validator):
    body = bad_request(client.get("/fhir/ActivityDefinition", params={"_lastUpdated": "ge2025-13-45"}), r4_validator)
    assert body["issue"][0]["expression"] == ["_lastUpdated"]


# ---------------------------------------------------------------------- _sort


def _by_last_updated(corpus: dict[str, dict[str, Any]]) -> list[str]:
    return [r["name"] for r in sorted(corpus.values(), key=lambda r: (r["meta"]["lastUpdated"], r["id"]))]


@pytest.mark.parametrize(("sort", "expected"), [
    ("name", ["Cryomassage", "LaserTherapy", "Mesotherapy", "Phonophoresis", "VacuumMassage"]),
    ("-name", ["VacuumMassage", "Phonophoresis", "Mesotherapy", "LaserTherapy", "Cryomassage"]),
    ("title", ["Cryomassage", "Mesotherapy", "Phonophoresis", "LaserTherapy", "VacuumMassage"]),
    ("-title", ["VacuumMassage", "LaserTherapy", "Phonophoresis", "Mesotherapy", "Cryomassage"]),
])
def test_sort_by_name_and_title_ascending_and_descending(client, corpus, r4_validator, sort, expected):
    assert names(search(client, r4_validator, topic=f"{TOPIC}|corpus", _sort=sort)) == expected


def test_sort_by_last_updated_ascending_and_descending(client, corpus, r4_validator):
    oldest_first = _by_last_updated(corpus)
    assert oldest_first != sorted(oldest_first)  # the created order is not alphabetical
    assert names(search(client, r4_validator, topic=f"{TOPIC}|corpus", _sort="_lastUpdated")) == oldest_first
    assert names(search(client, r4_validator, topic=f"{TOPIC}|corpus", _sort="-_lastUpdated")) == oldest_first[::-1]


def test_sorted_pages_follow_the_sort_across_next_links(client, corpus, r4_validator):
    collected, bundle = [], search(client, r4_validator, topic=f"{TOPIC}|corpus", _sort="-_lastUpdated", _count=2)
    while True:
        collected += names(bundle)
        nxt = link(bundle, "next")
        if not nxt:
            break
        bundle = client.get(nxt).json()
    assert collected == _by_last_updated(corpus)[::-1]


def test_sorting_by_an_unsortable_parameter_is_400(client, r4_validator):
    bad_request(client.get("/fhir/ActivityDefinition", params={"_sort": "purpose"}), r4_validator)


# ---------------------------------------------------------------------- _count, _summary, _elements, _total


def test_count_defaults_to_20_per_page(client, r4_validator):
    label = unique("page")
    entries = [post_entry(activity_definition(topic=topic(label))) for _ in range(23)]
    assert transaction(client, entries, "batch").status_code == 200
    first = search(client, r4_validator, topic=f"{TOPIC}|{label}")
    assert len(ids(first)) == 20 and link(first, "next")
    rest = client.get(link(first, "next")).json()
    assert len(ids(rest)) == 3 and not link(rest, "next")
    everything = search(client, r4_validator, topic=f"{TOPIC}|{label}", _count=5000)
    assert len(ids(everything)) == 23 and not link(everything, "next")


def test_count_is_capped_at_1000():
    query = parse_query("ActivityDefinition", [("_count", "5000")], {})
    assert query.count == MAX_COUNT == 1000


def test_count_that_is_not_a_number_is_400(client, r4_validator):
    bad_request(client.get("/fhir/ActivityDefinition", params={"_count": "many"}), r4_validator)


def test_summary_count_answers_only_the_total(client, corpus, r4_validator):
    bundle = search(client, r4_validator, topic=f"{TOPIC}|corpus", _summary="count")
    assert bundle["total"] == 5 and "entry" not in bundle


def test_count_zero_answers_the_total_without_entries(client, corpus, r4_validator):
    bundle = search(client, r4_validator, topic=f"{TOPIC}|corpus", _count=0)
    assert bundle["total"] == 5 and "entry" not in bundle and not link(bundle, "next")


def test_summary_true_keeps_summary_elements_and_tags_the_resource_subsetted(client, corpus, r4_validator):
    bundle = search(client, r4_validator, _id=corpus["Cryomassage"]["id"], _summary="true")
    resource = bundle["entry"][0]["resource"]
    assert resource["name"] == "Cryomassage" and resource["status"] == "active"
    assert "purpose" not in resource and "topic" not in resource
    assert {"code": "SUBSETTED"}.items() <= resource["meta"]["tag"][0].items()


def test_elements_keeps_the_named_and_mandatory_elements(client, corpus, r4_validator):
    bundle = search(client, r4_validator, _id=corpus["Cryomassage"]["id"], _elements="title,url")
    resource = bundle["entry"][0]["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "title", "url", "status"}
    assert resource["meta"]["tag"][0]["code"] == "SUBSETTED"


def test_total_accurate_counts_every_match_while_the_default_omits_it(client, corpus, r4_validator):
    assert "total" not in search(client, r4_validator, topic=f"{TOPIC}|corpus", _count=2)
    counted = search(client, r4_validator, topic=f"{TOPIC}|corpus", _count=2, _total="accurate")
    assert counted["total"] == 5 and len(ids(counted)) == 2


def test_search_by_post_takes_the_same_parameters_as_get(client, corpus, r4_validator):
    response = client.post("/fhir/ActivityDefinition/_search", content="name=cryo&_summary=true",
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200
    r4_validator.assert_valid(response.content)
    assert names(response.json()) == ["Cryomassage"]


# ---------------------------------------------------------------------- paging


def test_paging_stays_correct_while_resources_are_written_between_pages(client, r4_validator):
    """Keyset paging: a page is anchored on its last row, so writes elsewhere neither repeat nor skip rows."""
    label = unique("paging")
    originals = [create(client, activity_definition(topic=topic(label))) for _ in range(7)]
    seen: list[str] = []
    bundle = search(client, r4_validator, topic=f"{TOPIC}|{label}", _count=3, _sort="name")
    seen += ids(bundle)
    # A newcomer sorting before everything (offset paging would now repeat a row) and an edit of a seen row.
    create(client, activity_definition("Aa" + unique(), topic=topic(label)))
    edited = next(r for r in originals if r["id"] == seen[0])
    assert put(client, {**edited, "title": "edited"}, 1).status_code == 200
    while nxt := link(bundle, "next"):
        bundle = client.get(nxt).json()
        r4_validator.assert_valid(bundle)
        seen += ids(bundle)
    assert len(seen) == len(set(seen)) == 7
    assert set(seen) == {r["id"] for r in originals}


def test_previous_link_returns_the_page_before(client, corpus, r4_validator):
    first = search(client, r4_validator, topic=f"{TOPIC}|corpus", _sort="name", _count=2)
    assert not link(first, "previous")
    second = client.get(link(first, "next")).json()
    third = client.get(link(second, "next")).json()
    back = client.get(link(third, "previous")).json()
    r4_validator.assert_valid(back)
    assert names(back) == names(second) == ["Mesotherapy", "Phonophoresis"]
    assert names(client.get(link(back, "previous")).json()) == names(first)


def test_a_tampered_paging_cursor_is_400(client, r4_validator):
    bad_request(client.get("/fhir/ActivityDefinition", params={"_cursor": "not-a-cursor"}), r4_validator)


# ---------------------------------------------------------------------- _include


def test_include_definition_returns_the_protocol_with_its_activity_definitions(client, corpus, protocol, r4_validator):
    bundle = search(client, r4_validator, "PlanDefinition", _id=protocol["id"],
                    _include="PlanDefinition:definition")
    assert ids(bundle) == [protocol["id"]]
    included = {e["resource"]["name"] for e in bundle["entry"] if e["search"]["mode"] == "include"}
    assert included == {"Cryomassage", "Mesotherapy", "VacuumMassage"}


def test_an_include_the_catalog_does_not_support_is_400(client, r4_validator):
    bad_request(client.get("/fhir/PlanDefinition", params={"_include": "PlanDefinition:subject"}), r4_validator)


def test_reference_search_by_canonical(client, corpus, protocol, r4_validator):
    found = search(client, r4_validator, "PlanDefinition", definition=f"{corpus['VacuumMassage']['url']}|1.0.0")
    assert ids(found) == [protocol["id"]]


# ---------------------------------------------------------------------- unknown and bad parameters


def test_an_unknown_parameter_is_ignored_with_a_warning_outcome_entry(client, corpus, r4_validator):
    bundle = search(client, r4_validator, name="cryo", colour="blue")
    assert names(bundle) == ["Cryomassage"]
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcome) == 1
    issue = outcome[0]["resource"]["issue"][0]
    assert issue["severity"] == "warning" and issue["expression"] == ["colour"]
    assert "colour" not in link(bundle, "self")


def test_an_unknown_parameter_is_400_under_prefer_handling_strict(client, r4_validator):
    response = client.get("/fhir/ActivityDefinition", params={"colour": "blue"}, headers={"Prefer": "handling=strict"})
    assert bad_request(response, r4_validator)["issue"][0]["expression"] == ["colour"]


def test_a_modifier_the_parameter_type_does_not_take_is_400(client, r4_validator):
    bad_request(client.get("/fhir/ActivityDefinition", params={"code:exact": "cryo"}), r4_validator)


def test_an_empty_value_is_400(client, r4_validator):
    bad_request(client.get("/fhir/ActivityDefinition", params={"name": ""}), r4_validator)
