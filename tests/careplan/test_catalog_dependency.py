"""The care-plan service depends on the catalog over HTTP: protocols are data, and outages are survivable."""

from __future__ import annotations

import asyncio
import copy
import json

import httpx

from services.careplan.catalog_client import CatalogClient
from services.catalog.settings import CONTENT_DIR
from tests.careplan.conftest import answer, assessment_of, example
from tests.support.apps import FHIR_JSON, careplan_app, catalog_app, running
from tests.support.servers import free_port, serve


def generate(client, parameters):
    return client.post("/fhir/CarePlan/$generate", json=parameters, headers=FHIR_JSON)


def test_a_protocol_published_into_the_catalog_is_used_without_code_change(tmp_path, r4_validator):
    protocol = json.loads((CONTENT_DIR / "PlanDefinition" / "hypotrophic-scar-protocol.json").read_text())
    keloid = copy.deepcopy(protocol)
    keloid.pop("id")
    keloid.pop("meta", None)
    keloid["url"] = "https://hospital.example/fhir/PlanDefinition/keloid-home-care"
    keloid["name"], keloid["title"] = "KeloidHomeCare", "Keloid home care (hospital protocol)"
    scar = {"system": "https://fhir.cicatrix.org/CodeSystem/scar-type", "code": "keloid", "display": "Keloid scar"}
    keloid["useContext"][0]["valueCodeableConcept"] = {"coding": [scar]}
    text = json.dumps(keloid).replace("code='hypotrophic'", "code='keloid'")
    with serve(catalog_app(f"sqlite:///{tmp_path}/catalog.db", LOG_LEVEL="WARNING")) as catalog:
        parameters = example("keloid-unsupported")
        with running(careplan_app(f"sqlite:///{tmp_path}/cp.db", CATALOG_URL=catalog + "/fhir",
                                  CATALOG_CACHE_SECONDS=0)) as careplan:
            assert generate(careplan, parameters).status_code == 422
            published = httpx.post(catalog + "/fhir/PlanDefinition", content=text, headers=FHIR_JSON)
            assert published.status_code == 201, published.text
            response = generate(careplan, parameters)
            assert response.status_code == 201, response.text
            plan = response.json()
            r4_validator.assert_valid(plan)
            assert plan["instantiatesCanonical"] == [f"{keloid['url']}|{keloid['version']}"]


def test_plans_keep_flowing_from_the_last_good_copy_while_the_catalog_is_down(tmp_path):
    port = free_port()
    app = careplan_app(f"sqlite:///{tmp_path}/cp.db", CATALOG_URL=f"http://127.0.0.1:{port}/fhir",
                       CATALOG_CACHE_SECONDS=0, CATALOG_TIMEOUT_SECONDS=1)
    with running(app) as careplan:
        with serve(catalog_app(f"sqlite:///{tmp_path}/catalog.db", LOG_LEVEL="WARNING"), port=port):
            assert generate(careplan, example("atrophic-chest-visible-vessels")).status_code == 201
            assert generate(careplan, example("atrophic-pregnant")).status_code == 201  # revalidated (304s)
        # the catalog is down now: every revalidation fails, the last good copy is used
        during_outage = example("atrophic-chest-visible-vessels")
        assessment_of(during_outage)["id"] = "during-outage"
        assessment_of(during_outage)["identifier"]["value"] = "during-outage"
        answer(during_outage, "scar-age-months")["answer"] = [{"valueInteger": 30}]
        response = generate(careplan, during_outage)
        assert response.status_code == 201, response.text
        assert response.json()["period"]["end"] == "2027-09-02", "the old-scar course came from the cached protocol"


def test_with_nothing_cached_a_catalog_outage_is_503(tmp_path, r4_validator):
    dead = f"http://127.0.0.1:{free_port()}/fhir"
    with running(careplan_app(f"sqlite:///{tmp_path}/cp.db", CATALOG_URL=dead, CATALOG_TIMEOUT_SECONDS=1)) as careplan:
        response = generate(careplan, example("atrophic-chest-visible-vessels"))
    assert response.status_code == 503
    r4_validator.assert_valid(response.json())
    assert "catalog" in response.json()["issue"][0]["diagnostics"]


def test_cached_knowledge_is_revalidated_with_etags(tmp_path):
    with serve(catalog_app(f"sqlite:///{tmp_path}/catalog.db", LOG_LEVEL="WARNING")) as catalog:
        with running(careplan_app(f"sqlite:///{tmp_path}/cp.db", CATALOG_URL=catalog + "/fhir",
                                  CATALOG_CACHE_SECONDS=0)) as careplan:
            assert generate(careplan, example("atrophic-chest-visible-vessels")).status_code == 201
            assert generate(careplan, example("atrophic-pregnant")).status_code == 201
        metrics = httpx.get(catalog + "/metrics").text
    revalidated = [line for line in metrics.splitlines()
                   if line.startswith("http_requests_total") and 'status="304"' in line]
    assert revalidated, "the second plan revalidated the cached protocol instead of downloading it again"


def test_concurrent_requests_for_one_url_share_a_fetch_and_nothing_stays_behind(catalog_url):
    client = CatalogClient(catalog_url, fresh_seconds=0, max_bytes=256 * 1024)

    async def scenario() -> None:
        bundles = await asyncio.gather(*(client.get("/PlanDefinition", [("_count", "1")]) for _ in range(20)))
        assert all(bundle is bundles[0] for bundle in bundles), "one fetch answered all twenty"
        for i in range(300):  # distinct URLs, as client-supplied canonicals make them
            await client.get("/PlanDefinition", [("url", f"https://x.test/{i}/" + "p" * 400)])
        await client.close()

    asyncio.run(scenario())
    assert client._fetching == {}
    assert client.cache.size <= 256 * 1024 and len(client.cache) < 300


def test_what_is_derived_from_an_answer_is_computed_once_per_answer():
    """Kept while the answer stands (fresh or revalidated by a 304), computed again when the catalog's answer
    changes; a catalog answering over a transport that counts the derivations."""
    versions = {"etag": 'W/"1"', "codes": ["a"]}

    def catalog(request: httpx.Request) -> httpx.Response:
        if request.headers.get("if-none-match") == versions["etag"]:
            return httpx.Response(304, headers={"ETag": versions["etag"]})
        body = {"resourceType": "ValueSet", "expansion": {"contains": [{"code": c} for c in versions["codes"]]}}
        return httpx.Response(200, json=body, headers={"ETag": versions["etag"]})

    derivations: list[list[str]] = []

    def codes(expansion: dict) -> list[str]:
        found = [c["code"] for c in expansion["expansion"]["contains"]]
        derivations.append(found)
        return found

    async def scenario() -> list[list[str]]:
        client = CatalogClient("http://catalog.test/fhir", fresh_seconds=0, transport=httpx.MockTransport(catalog))
        seen = [await client.derived("/ValueSet/$expand", [("url", "u")], "codes", codes) for _ in range(3)]
        versions.update(etag='W/"2"', codes=["a", "b"])
        seen.append(await client.derived("/ValueSet/$expand", [("url", "u")], "codes", codes))
        seen.append(await client.derived("/ValueSet/$expand", [("url", "u")], "codes", codes))
        await client.close()
        return seen

    assert asyncio.run(scenario()) == [["a"], ["a"], ["a"], ["a", "b"], ["a", "b"]]
    assert derivations == [["a"], ["a", "b"]], "once per answer: the 304s kept the first, the change made another"
