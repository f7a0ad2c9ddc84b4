"""`scar-order-safety` on `order-sign` (and `order-select`): the catalog's own screening rules on orders written
by hand — retinoids in pregnancy, allergens, and procedures that clash with a scheduled session."""

from __future__ import annotations

import json
import shutil
from datetime import date, timedelta

import pytest

from services.careplan.cds.cards import OVERRIDE_REASONS
from services.catalog.settings import CONTENT_DIR
from tests.cds.conftest import cds_settings
from tests.cds.support import (
    LOINC,
    Ehr,
    allergy,
    assessment,
    complete_prefetch,
    draft_orders,
    hook_body,
    medication_request,
    pregnancy,
    searchset,
    service_request,
    status_observation,
)
from tests.cds.test_patient_view import active_plan
from tests.support.apps import careplan_app, catalog_app, running
from tests.support.servers import serve

TRETINOIN_ATC = {"system": "http://www.whocc.no/atc", "code": "D10AD01", "display": "tretinoin"}
AHA_PEEL = {"system": "https://fhir.cicatrix.org/CodeSystem/scar-modality", "code": "aha-peel"}


def sign(ehr, *orders, **prefetch):
    body = hook_body("order-sign", complete_prefetch(assessment=searchset(assessment()), **prefetch),
                     draftOrders=draft_orders(*orders))
    return ehr.cards("scar-order-safety", body)


def test_tretinoin_for_a_pregnant_patient_gets_a_critical_card_suggesting_to_delete_it(ehr):
    order = medication_request("Tretinoin 0.05% cream", TRETINOIN_ATC)
    [card] = sign(ehr, order, pregnancy=searchset(pregnancy(True)))
    assert card["indicator"] == "critical"
    assert "pregnancy" in card["summary"].lower()
    [suggestion] = card["suggestions"]
    assert suggestion["actions"] == [{"type": "delete", "description": "Remove the order for Tretinoin 0.05% cream",
                                      "resourceId": "MedicationRequest/rx-1"}]
    assert card["selectionBehavior"] == "at-most-one"
    assert all(reason["display"] for reason in card["overrideReasons"])


def test_tretinoin_named_only_in_text_is_still_recognised(ehr):
    [card] = sign(ehr, medication_request("tretinoin gel"), pregnancy=searchset(pregnancy(True)))
    assert card["indicator"] == "critical"


def test_tretinoin_for_a_patient_who_is_not_pregnant_gets_no_card(ehr):
    assert sign(ehr, medication_request("Tretinoin 0.05% cream", TRETINOIN_ATC),
                pregnancy=searchset(pregnancy(False))) == []


def test_a_breastfeeding_patient_gets_the_critical_card_too(ehr):
    feeding = status_observation("63895-7", (LOINC, "LA29252-6", "Currently breastfeeding"))
    [card] = sign(ehr, medication_request("Tretinoin 0.05% cream", TRETINOIN_ATC),
                  pregnancy=searchset(pregnancy(False)), breastfeeding=searchset(feeding))
    assert card["indicator"] == "critical" and "breastfeeding" in card["summary"].lower()


def test_mederma_for_an_onion_allergy_gets_a_warning(ehr):
    [card] = sign(ehr, medication_request("Mederma gel 20 g"), allergies=searchset(allergy("Onion")))
    assert card["indicator"] == "warning"
    assert card["summary"].startswith("Mederma gel 20 g: Allergy")
    assert "onion" in card["detail"].lower()
    assert card["suggestions"][0]["actions"][0]["resourceId"] == "MedicationRequest/rx-1"
    assert card["overrideReasons"]


def test_mederma_without_an_allergy_gets_no_card(ehr):
    assert sign(ehr, medication_request("Mederma gel 20 g"), allergies=searchset(allergy("Penicillin"))) == []


def test_an_order_the_catalog_does_not_know_gets_no_card(ehr):
    assert sign(ehr, medication_request("Amoxicillin 500 mg"), pregnancy=searchset(pregnancy(True))) == []


def mesotherapy_days(plan) -> list[str]:
    [detail] = [a["detail"] for a in plan["activity"]
                if a["detail"].get("instantiatesCanonical", [""])[0].split("|")[0].endswith("/mesotherapy")
                and not a["detail"].get("doNotPerform")]
    return detail["scheduledTiming"]["event"]


def test_a_peel_on_a_mesotherapy_day_of_the_active_plan_gets_a_warning_naming_the_session(ehr):
    plan = active_plan(ehr, date.today() + timedelta(days=7))
    session = mesotherapy_days(plan)[2]
    [card] = sign(ehr, service_request("AHA peel", session[:10], AHA_PEEL), carePlans=searchset(plan))
    assert card["indicator"] == "warning"
    assert "Mesotherapy" in card["summary"]
    assert date.fromisoformat(session[:10]).strftime("%d %b %Y") in card["summary"]
    assert card["suggestions"][0]["actions"][0]["resourceId"] == "ServiceRequest/sr-1"


def test_a_peel_after_the_plan_has_ended_gets_no_card(ehr):
    plan = active_plan(ehr, date.today() + timedelta(days=7))
    later = (date.fromisoformat(plan["period"]["end"]) + timedelta(days=60)).isoformat()
    assert sign(ehr, service_request("AHA peel", later, AHA_PEEL), carePlans=searchset(plan)) == []


def test_order_select_screens_only_the_selected_orders(ehr):
    tretinoin = medication_request("Tretinoin 0.05% cream", TRETINOIN_ATC, order_id="rx-2")
    mederma = medication_request("Mederma gel 20 g", order_id="rx-3")
    prefetch = complete_prefetch(assessment=searchset(assessment()), pregnancy=searchset(pregnancy(True)))
    body = hook_body("order-select", prefetch, selections=["MedicationRequest/rx-3"],
                     draftOrders=draft_orders(tretinoin, mederma))
    assert ehr.cards("scar-order-safety-select", body) == []
    body["context"]["selections"] = ["MedicationRequest/rx-2"]
    [card] = ehr.cards("scar-order-safety-select", body)
    assert card["indicator"] == "critical"


def test_a_retinoid_order_without_pregnancy_data_says_what_was_not_checked(ehr):
    body = hook_body("order-sign", {"assessment": None, "carePlans": None, "allergies": None},
                     draftOrders=draft_orders(medication_request("Tretinoin 0.05% cream", TRETINOIN_ATC)))
    [card] = ehr.cards("scar-order-safety", body)
    assert card["indicator"] == "info"
    assert card["summary"] == "Not checked: breastfeeding status, pregnancy status"


@pytest.mark.parametrize("hook", ["patient-view", "order-select"])
def test_the_order_sign_service_refuses_another_hook(ehr, hook):
    body = hook_body(hook, selections=["MedicationRequest/rx-1"], draftOrders=draft_orders())
    response = ehr.call("scar-order-safety", body)
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["hook"]




def test_the_override_reasons_are_the_ones_the_catalog_publishes():
    published = json.loads((CONTENT_DIR / "ValueSet" / "cds-override-reason.json").read_text())
    [include] = published["compose"]["include"]
    assert [{"system": include["system"], **c} for c in include["concept"]] == OVERRIDE_REASONS


GAP = "https://fhir.cicatrix.org/StructureDefinition/not-same-day-gap"
GAP_REASON = "https://fhir.cicatrix.org/StructureDefinition/not-same-day-reason"


@pytest.fixture(scope="module")
def gap_ehr(ehr_issuer, shapes, tmp_path_factory):
    """The care-plan service over a catalog whose peel and mesotherapy keep two days apart (not-same-day-gap)."""
    folder = tmp_path_factory.mktemp("gap")
    content = folder / "content"
    shutil.copytree(CONTENT_DIR, content)
    for name in ("aha-peel", "mesotherapy"):
        path = content / "ActivityDefinition" / f"{name}.json"
        definition = json.loads(path.read_text())
        definition["extension"] += [
            {"url": GAP, "valueDuration": {"value": 2, "unit": "days", "system": "http://unitsofmeasure.org",
                                           "code": "d"}},
            {"url": GAP_REASON, "valueString": f"{name} needs two days before the next procedure on the site"}]
        path.write_text(json.dumps(definition))
    with serve(catalog_app(f"sqlite:///{folder}/catalog.db", content_dir=content, LOG_LEVEL="WARNING")) as url:
        app = careplan_app(f"sqlite:///{folder}/careplan.db", CATALOG_URL=url + "/fhir",
                           **cds_settings(ehr_issuer, folder))
        with running(app) as client:
            yield Ehr(client, ehr_issuer, shapes)


@pytest.mark.parametrize(("days_after", "clashes"), [(1, True), (2, False)])
def test_a_peel_days_after_a_mesotherapy_session_clashes_within_the_catalogs_gap(gap_ehr, days_after, clashes):
    plan = active_plan(gap_ehr, date.today() + timedelta(days=7))
    session = mesotherapy_days(plan)[2]
    day = (date.fromisoformat(session[:10]) + timedelta(days=days_after)).isoformat()
    cards = sign(gap_ehr, service_request("AHA peel", day, AHA_PEEL), carePlans=searchset(plan))
    lines = [line for c in cards for line in c.get("detail", "").splitlines() if line.startswith("- Mesotherapy")]
    assert bool(lines) == clashes, cards
    if clashes:
        assert "at least 2 days apart: " in lines[0] and "needs two days" in lines[0]
