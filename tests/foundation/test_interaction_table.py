"""The interaction table: where its entries are routed, what it declares and which operation rules it gives."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from services.fhir.capability import CapabilityBuilder, ResourceCapability
from services.fhir.interaction_table import Entry, InteractionTable, Permission


def answer(name: str) -> Any:
    def handler() -> dict[str, str]:
        return {"answered_by": name}
    return handler


def read_any(resource_type: str, resource_id: str) -> dict[str, str]:
    return {"answered_by": f"read {resource_type}"}


def routed(table: InteractionTable) -> TestClient:
    app = FastAPI()
    table.install(app, ctx=None)  # type: ignore[arg-type]  # no entry answers ahead of FastAPI here
    return TestClient(app)


def test_a_literal_path_is_routed_before_a_parameter_that_would_take_it_whatever_the_order_added():
    table = InteractionTable(())
    table.add([Entry("read", read_any, ("ValueSet", "CodeSystem"), by_type=True),
               Entry("$expand", answer("expand"), ("ValueSet",), method="GET", permission=Permission("r"),
                     definition="http://hl7.org/fhir/OperationDefinition/ValueSet-expand"),
               Entry("read", answer("read Task"), ("Task",))])
    client = routed(table)
    assert client.get("/fhir/ValueSet/$expand").json() == {"answered_by": "expand"}
    assert client.get("/fhir/Task/1").json() == {"answered_by": "read Task"}
    assert client.get("/fhir/CodeSystem/1").json() == {"answered_by": "read CodeSystem"}


def test_routes_keep_the_tables_order_otherwise_so_a_405_names_the_same_methods():
    table = InteractionTable(())
    table.add([Entry("read", read_any, ("CarePlan",), by_type=True),
               Entry("update", answer("update"), ("CarePlan",))])
    paths = [(r.path, sorted(r.methods)) for r in routed(table).app.routes if isinstance(r, APIRoute)]  # type: ignore[attr-defined]
    assert paths == [("/fhir/{resource_type}/{resource_id}", ["GET"]), ("/fhir/CarePlan/{resource_id}", ["PUT"])]


def test_batch_and_transaction_share_one_route_at_the_base_and_its_slash():
    table = InteractionTable(())
    handler = answer("bundle")
    table.add([Entry("batch", handler, tag="system"), Entry("transaction", handler, tag="system")])
    client = routed(table)
    assert client.post("/fhir").json() == client.post("/fhir/").json() == {"answered_by": "bundle"}
    assert client.app.openapi()["paths"]["/fhir"]["post"]["summary"] == "batch | transaction on the system"  # type: ignore[attr-defined]


def test_two_handlers_for_one_path_and_method_are_refused():
    table = InteractionTable(())
    table.add([Entry("read", answer("a"), ("Task",))])
    with pytest.raises(ValueError, match="two handlers"):
        table.add([Entry("read", answer("b"), ("Task",))])


def test_an_operation_needs_a_permission_and_a_definition():
    with pytest.raises(ValueError, match="permission"):
        Entry("$retry", answer("retry"), ("Task",), method="POST", instance=True)


def test_operation_rules_name_the_type_or_any_type_for_a_route_that_takes_it():
    table = InteractionTable(())
    table.add([Entry("$validate", answer("v"), ("ValueSet", "CodeSystem"), by_type=True, method="POST",
                     permission=Permission("c"), definition="d"),
               Entry("$apply", answer("a"), ("PlanDefinition",), method="POST",
                     permission=Permission("r", "CarePlan"), definition="d"),
               Entry("$ehr-capabilities", answer("e"), method="GET", permission=Permission("r", "Task"),
                     definition="d")])
    assert table.operation_rules() == {("*", "validate"): ("*", "c"), ("PlanDefinition", "apply"): ("CarePlan", "r"),
                                       ("*", "ehr-capabilities"): ("Task", "r")}


def test_the_statement_lists_each_types_interactions_in_a_fixed_order_and_its_operations():
    table = InteractionTable((ResourceCapability(type="Subscription"),))
    table.add([Entry("delete", answer("d"), ("Subscription",)), Entry("read", answer("r"), ("Subscription",)),
               Entry("$status", answer("s"), ("Subscription",), instance=True, permission=Permission("r"),
                     definition="http://example.org/status", documentation="Its status")])
    builder = CapabilityBuilder(name="Test", title="Test", description="Test", software_version="1")
    table.declare(builder)
    [resource] = builder.build()["rest"][0]["resource"]
    assert resource["interaction"] == [{"code": "read"}, {"code": "delete"}]
    assert resource["operation"] == [{"name": "status", "definition": "http://example.org/status",
                                      "documentation": "Its status"}]


def test_a_type_without_a_description_is_refused():
    table = InteractionTable(())
    table.add([Entry("read", answer("r"), ("Task",))])
    with pytest.raises(ValueError, match="No ResourceCapability describes Task"):
        table.declare(CapabilityBuilder(name="Test", title="Test", description="Test", software_version="1"))
