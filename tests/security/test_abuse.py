"""One hostile request never stalls a service: each reproduces an attack that did, against real servers.

Both services run in processes of their own. Every attack runs under `Attack.run`
(tests/security/abuse.py): the event loops of both services are watched (no handler may keep one busy for
100 ms), /healthz is probed throughout (no probe over 250 ms), and the attack has a time bound. Sizes are
those that stalled the services before (38,000 allergy answers, 2,000 `_include`s, a 600 KB canonical);
`make fuzz` runs the longer versions at the bottom.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.careplan.settings import CareplanSettings
from tests.security.abuse import (
    FHIR_JSON,
    FORM,
    Attack,
    as_apply,
    fresh,
    intolerance,
    many_allergies,
    metric,
    padded_apply,
    shifted,
    with_allergies,
    with_start,
)
from tests.security.issuer import Issuer
from tests.security.strategies import FUZZ_EXAMPLES, fuzz_settings
from tests.support.servers import ServerProcess, serve_in_process

CATALOG = "tests.support.apps:catalog_app"
CAREPLAN = "tests.support.apps:careplan_app"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("abuse-catalog")
    with serve_in_process(CATALOG, database_url=f"sqlite:///{folder}/catalog.db", LOG_LEVEL="WARNING") as server:
        yield server


@pytest.fixture(scope="module")
def careplan(tmp_path_factory: pytest.TempPathFactory, catalog: ServerProcess) -> Iterator[ServerProcess]:
    """On SQLite only: what is under test is the event loop and the limits, which storage does not touch (the
    storage of plans is tested on both backends in tests/careplan)."""
    folder = tmp_path_factory.mktemp("abuse-careplan")
    with serve_in_process(CAREPLAN, database_url=f"sqlite:///{folder}/careplan.db", CATALOG_URL=f"{catalog.url}/fhir",
                          LOG_LEVEL="WARNING", DISPATCHER="off") as server:
        yield server


@pytest.fixture
def refused(assert_r4: Callable[[dict[str, Any]], None]) -> Callable[[httpx.Response, int, str], None]:
    def check(response: httpx.Response, status: int, limit: str) -> None:
        """A valid OperationOutcome with `status` whose diagnostics or expression name the limit."""
        assert response.status_code == status, response.text[:500]
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert_r4(outcome)
        named = " ".join(i.get("diagnostics", "") + " " + " ".join(i.get("expression", [])) for i in outcome["issue"])
        assert limit in named, named
    return check


# --------------------------------------------------- planning on large allergy lists


def test_thirty_eight_thousand_allergy_answers_are_refused_at_once_naming_the_limit(careplan, catalog, refused):
    body = with_allergies(many_allergies(38_000))
    response, _ = Attack(careplan, catalog).run(
        lambda http: http.post("/fhir/CarePlan/$generate", json=body, headers=FHIR_JSON), within=5)
    refused(response, 422, "CAREPLAN_MAX_ANSWERS_PER_ITEM")


def test_apply_with_five_thousand_answers_is_refused_at_once(careplan, catalog, refused):
    body = as_apply(with_allergies(many_allergies(5_000)))
    response, _ = Attack(careplan, catalog).run(
        lambda http: http.post("/fhir/PlanDefinition/$apply", json=body, headers=FHIR_JSON), within=5)
    refused(response, 422, "CAREPLAN_MAX_ANSWERS_PER_ITEM")


def test_as_many_allergies_as_allowed_are_screened_without_blocking_the_loop(careplan, catalog):
    # 99 that match nothing, then camphor: every preparation is compared with all of them
    body = as_apply(with_allergies([*many_allergies(99), {"valueString": "Camphor"}]))
    response, _ = Attack(careplan, catalog).run(
        lambda http: http.post("/fhir/PlanDefinition/$apply", json=body, headers=FHIR_JSON), within=10)
    assert response.status_code == 200, response.text[:500]
    assert "Camphor" in response.text, "the last allergy of the list still excludes the camphor preparation"


def test_allergies_count_once_however_often_they_are_repeated(careplan, catalog, refused):
    repeated = [intolerance("Onion extract")] * 150
    body = as_apply(with_allergies(many_allergies(99), intolerances=repeated))
    response, _ = Attack(careplan, catalog).run(
        lambda http: http.post("/fhir/PlanDefinition/$apply", json=body, headers=FHIR_JSON), within=10)
    assert response.status_code == 200, response.text[:500]
    distinct = [intolerance(f"Substance {i}") for i in range(2)]
    response = httpx.post(f"{careplan.url}/fhir/PlanDefinition/$apply", headers=FHIR_JSON,
                          json=as_apply(with_allergies(many_allergies(99), intolerances=distinct)))
    refused(response, 422, "CAREPLAN_MAX_ALLERGIES")


def test_too_many_parameters_are_refused_before_they_are_read(careplan, catalog, refused):
    body = with_allergies([], intolerances=[intolerance("Onion extract")] * 3_000)
    response, _ = Attack(careplan, catalog).run(
        lambda http: http.post("/fhir/CarePlan/$generate", json=body, headers=FHIR_JSON), within=5)
    refused(response, 422, "CAREPLAN_MAX_PARAMETERS")


# ------------------------------------------------------ POST _search and _include


def test_two_thousand_includes_by_post_are_refused_at_once_naming_the_limit(catalog, refused):
    form = "&".join(["_include=PlanDefinition:definition"] * 1_000 + ["_include:iterate=ActivityDefinition:product"]
                    * 1_000 + [f"_include=PlanDefinition:definition:T{i}" for i in range(20)])
    response, _ = Attack(catalog).run(
        lambda http: http.post("/fhir/PlanDefinition/_search", content=form, headers=FORM), within=5)
    refused(response, 400, "CATALOG_MAX_INCLUDES")


def test_a_repeated_include_counts_once(catalog, assert_r4):
    form = "&".join(["_include=PlanDefinition:definition"] * 2_000)
    response, _ = Attack(catalog).run(
        lambda http: http.post("/fhir/PlanDefinition/_search", content=form, headers=FORM), within=10)
    assert response.status_code == 200, response.text[:500]
    assert_r4(response.json())
    assert any(e["search"]["mode"] == "include" for e in response.json()["entry"])
    assert metric(catalog, "cicatrix_cache_bytes", cache="reads") <= metric(catalog, "cicatrix_cache_max_bytes",
                                                                             cache="reads")


# ------------------------------------------------------ caches keyed by client input


def test_padded_assessments_leave_memory_where_it_was(careplan, catalog):
    limit = CareplanSettings.model_construct().CONDITION_CACHE_BYTES
    post = lambda http, i: http.post("/fhir/PlanDefinition/$apply", json=padded_apply(i, 20_000),  # noqa: E731
                                     headers=FHIR_JSON).status_code
    with httpx.Client(base_url=careplan.url, timeout=60) as http:
        assert post(http, -1) == 200  # warm: the catalog's knowledge is fetched and cached
    before = careplan.rss_bytes()
    statuses, _ = Attack(careplan, catalog).run(
        lambda http: {post(http, i) for i in range(80)}, within=120)
    assert statuses == {200}
    grown = careplan.rss_bytes() - before
    assert grown < 48 * 1024 * 1024, f"80 padded assessments grew memory by {grown // 2**20} MiB"
    assert metric(careplan, "cicatrix_cache_bytes", cache="condition-results") <= limit


def test_a_six_hundred_kilobyte_canonical_is_a_4xx(careplan, catalog, refused):
    body = fresh(with_allergies([]))
    body["parameter"].append({"name": "planDefinition", "valueCanonical": "https://x.test/" + "p" * 600_000})
    response, _ = Attack(careplan, catalog).run(
        lambda http: http.post("/fhir/CarePlan/$generate", json=body, headers=FHIR_JSON), within=5)
    refused(response, 422, "CAREPLAN_MAX_CANONICAL_LENGTH")


def test_distinct_canonicals_leave_no_lock_or_unbounded_entry_behind(careplan, catalog):
    def send(http: httpx.Client) -> set[int]:
        statuses = set()
        for i in range(50):
            body = fresh(with_allergies([]))
            assert_identifier = body["parameter"][1]["resource"]["identifier"]
            assert_identifier["value"] = f"canonical-{i}"
            canonical = f"https://x.test/{i}/" + "p" * 480
            body["parameter"].append({"name": "planDefinition", "valueCanonical": canonical})
            statuses.add(http.post("/fhir/CarePlan/$generate", json=body, headers=FHIR_JSON).status_code)
        return statuses

    statuses, _ = Attack(careplan, catalog).run(send, within=60)
    assert statuses == {422}
    assert metric(careplan, "cicatrix_cache_bytes", cache="catalog") <= CareplanSettings.model_construct(
    ).CATALOG_CACHE_BYTES


# ---------------------------------------------------- 500s on input that deserves a 4xx


@pytest.mark.parametrize("query", ["date=gt9999-12-31", "_lastUpdated=gt9999-12-31"])
def test_dates_beyond_the_calendar_are_400(careplan, query, refused):
    response = httpx.get(f"{careplan.url}/fhir/CarePlan?{query}")
    refused(response, 400, query.split("=")[0])


@pytest.mark.parametrize("anchor", ["null", "[1]", "true"])
def test_a_cursor_holding_something_else_than_a_sort_value_is_400(careplan, anchor, refused):
    cursor = base64.urlsafe_b64encode(f'["next",[{anchor}, {anchor}]]'.encode()).decode().rstrip("=")
    response = httpx.get(f"{careplan.url}/fhir/CarePlan?_sort=date&_cursor={cursor}")
    refused(response, 400, "_cursor")
    cursor = base64.urlsafe_b64encode(f'["next",[{anchor}]]'.encode()).decode().rstrip("=")
    refused(httpx.get(f"{careplan.url}/fhir/CarePlan?_cursor={cursor}"), 400, "_cursor")


@pytest.mark.parametrize("start", ["9999-12-31", "0001-01-01", "1900-01-01"])
def test_an_implausible_start_is_422_naming_the_parameter(careplan, start, refused):
    response = httpx.post(f"{careplan.url}/fhir/CarePlan/$generate", headers=FHIR_JSON,
                          json=with_start(date.fromisoformat(start), f"start-{start}"))
    refused(response, 422, "name = 'start'")
    assert "CAREPLAN_PLAN_START_PAST_DAYS" in response.text


def test_a_start_within_the_plausible_range_is_planned(careplan):
    response = httpx.post(f"{careplan.url}/fhir/CarePlan/$generate", headers=FHIR_JSON,
                          json=with_start(shifted(700), "start-in-two-years"))
    assert response.status_code == 201, response.text[:500]
    assert response.json()["period"]["start"] >= shifted(700).isoformat()


# ------------------------------------------------------------------------ JWKS outage


@pytest.fixture
def silent_issuer() -> Iterator[str]:
    """A JWKS URL whose server accepts connections and never answers (an issuer in trouble)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/jwks"


def test_a_jwks_outage_answers_every_request_together_and_then_at_once(silent_issuer, tmp_path: Path, refused):
    issuer = Issuer()
    headers = issuer.bearer("system/PlanDefinition.rs")
    with serve_in_process(CATALOG, database_url=f"sqlite:///{tmp_path}/jwks.db", content_dir=None,
                          LOG_LEVEL="WARNING", AUTH_MODE="jwt", AUTH_JWKS_URL=silent_issuer,
                          AUTH_ISSUER=issuer.issuer, AUTH_AUDIENCE=issuer.audience, AUTH_JWKS_TIMEOUT_SECONDS=1,
                          AUTH_JWKS_RETRY_SECONDS=30) as catalog:
        def concurrent(http: httpx.Client) -> list[tuple[int, float]]:
            def one(_: int) -> tuple[int, float]:
                started = time.perf_counter()
                status = http.get("/fhir/PlanDefinition", headers=headers).status_code
                return status, time.perf_counter() - started
            with ThreadPoolExecutor(5) as pool:
                return list(pool.map(one, range(5)))

        answers, _ = Attack(catalog).run(concurrent, within=3)
        assert {status for status, _ in answers} == {503}
        assert max(seconds for _, seconds in answers) < 2.5, f"requests queued behind each other: {answers}"
        with httpx.Client(base_url=catalog.url) as http:
            for _ in range(5):  # backing off: answered at once, with when to come back
                started = time.perf_counter()
                response = http.get("/fhir/PlanDefinition", headers=headers)
                assert time.perf_counter() - started < 0.25
                refused(response, 503, "cannot be checked")
                assert int(response.headers["retry-after"]) >= 1


# ------------------------------------------------------------- everything at once


def test_every_attack_at_once_blocks_neither_event_loop(careplan, catalog):
    includes = "&".join(["_include=PlanDefinition:definition"] * 2_000)
    attacks = [  # bodies encoded beforehand: encoding them would hold this process's GIL (the servers' too)
        ("POST", careplan.url + "/fhir/CarePlan/$generate", orjson.dumps(with_allergies(many_allergies(38_000))),
         FHIR_JSON),
        ("POST", careplan.url + "/fhir/PlanDefinition/$apply",
         orjson.dumps(as_apply(with_allergies(many_allergies(100)))), FHIR_JSON),
        ("POST", careplan.url + "/fhir/PlanDefinition/$apply", orjson.dumps(padded_apply(0, 50_000)), FHIR_JSON),
        ("POST", catalog.url + "/fhir/PlanDefinition/_search", includes.encode(), FORM),
        ("GET", careplan.url + "/fhir/CarePlan?date=gt9999-12-31", None, {}),
    ]

    def send(http: httpx.Client) -> list[int]:
        def one(attack: tuple[str, str, bytes | None, dict[str, str]]) -> int:
            method, url, body, headers = attack
            return http.request(method, url, content=body, headers=headers).status_code
        with ThreadPoolExecutor(len(attacks)) as pool:
            return list(pool.map(one, attacks))

    statuses, _ = Attack(careplan, catalog).run(send, within=30, probe_limit=None)
    assert all(status < 500 for status in statuses), statuses


# ---------------------------------------------------------------- make fuzz: longer


@pytest.mark.fuzz
@pytest.mark.skipif(not FUZZ_EXAMPLES, reason="the long version runs under `make fuzz`")
def test_five_hundred_padded_assessments_leave_memory_where_it_was(careplan, catalog):
    post = lambda http, i: http.post("/fhir/PlanDefinition/$apply", json=padded_apply(i, 50_000),  # noqa: E731
                                     headers=FHIR_JSON).status_code
    with httpx.Client(base_url=careplan.url, timeout=60) as http:
        assert post(http, -1) == 200
    before = careplan.rss_bytes()
    statuses, _ = Attack(careplan, catalog).run(lambda http: {post(http, i) for i in range(500)}, within=900)
    assert statuses == {200}
    assert careplan.rss_bytes() - before < 96 * 1024 * 1024


@pytest.mark.fuzz
@pytest.mark.skipif(not FUZZ_EXAMPLES, reason="the long version runs under `make fuzz`")
@settings(fuzz_settings(40), max_examples=min(FUZZ_EXAMPLES or 40, 40))  # each example: a few 1 MB requests
@given(answers=st.integers(0, 40_000), intolerances=st.integers(0, 400), includes=st.integers(0, 3_000),
       padding=st.integers(0, 200_000), concurrency=st.integers(1, 8))
def test_hostile_sizes_never_block_a_loop_or_answer_5xx(careplan, catalog, answers, intolerances, includes,
                                                         padding, concurrency):
    generate = with_allergies(many_allergies(answers), intolerances=[intolerance(f"S{i % 150}")
                                                                     for i in range(intolerances)])
    form = "&".join(f"_include=PlanDefinition:definition:T{i % 50}" for i in range(includes))
    padded = padded_apply(padding, padding)
    barrier = threading.Barrier(concurrency)

    def send(http: httpx.Client) -> list[int]:
        def one(i: int) -> int:
            barrier.wait()
            if i % 3 == 0:
                response = http.post(f"{careplan.url}/fhir/CarePlan/$generate", json=generate, headers=FHIR_JSON)
            elif i % 3 == 1:
                response = http.post(f"{catalog.url}/fhir/PlanDefinition/_search", content=form, headers=FORM)
            else:
                response = http.post(f"{careplan.url}/fhir/PlanDefinition/$apply", json=padded, headers=FHIR_JSON)
            return response.status_code
        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(one, range(concurrency)))

    statuses, _ = Attack(careplan, catalog).run(send, within=60, probe_limit=None)
    assert all(status < 500 or status == 503 for status in statuses), statuses
