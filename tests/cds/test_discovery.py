"""Discovery: GET /cds-services lists the services with their hooks and prefetch templates."""

from __future__ import annotations

from services.careplan.app import capability
from tests.cds.support import hook_body


def test_discovery_lists_the_services_with_hook_title_description_id_and_prefetch(ehr):
    response = ehr.client.get("/cds-services", headers={"Authorization": f"Bearer {ehr.token('/cds-services')}"})
    assert response.status_code == 200, response.text
    services = {s["id"]: s for s in ehr.shapes.check("discovery", response.json())["services"]}
    assert {(i, s["hook"]) for i, s in services.items()} == {
        ("scar-plan", "patient-view"), ("scar-order-safety", "order-sign"),
        ("scar-order-safety-select", "order-select")}
    prefetch = services["scar-plan"]["prefetch"]
    assert prefetch["pregnancy"].startswith("Observation?patient=Patient/{{context.patientId}}&code=http://loinc.org|82810-3")
    assert "http://loinc.org|63895-7" in prefetch["breastfeeding"]
    assert set(prefetch) == {"assessment", "carePlans", "allergies", "pregnancy", "breastfeeding"}


def test_discovery_needs_the_ehrs_jwt_like_every_cds_hooks_call(ehr):
    response = ehr.client.get("/cds-services")
    assert response.status_code == 401
    assert response.json()["resourceType"] == "OperationOutcome"


def test_the_capability_statement_names_the_cds_services():
    statement = capability().build()
    for service in ("scar-plan (patient-view)", "scar-order-safety (order-sign)",
                    "scar-order-safety-select (order-select)"):
        assert service in statement["implementation"]["description"]


def test_an_unknown_service_is_404_with_an_operation_outcome(ehr):
    response = ehr.call("no-such-service", hook_body("patient-view"))
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"
