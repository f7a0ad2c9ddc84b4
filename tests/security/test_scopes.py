"""SMART scope grammar (App Launch 2, scopes-and-launch-context.html): v2 letters, v1 words, what grants nothing."""

from __future__ import annotations

import doctest

import pytest

import services.fhir.scopes
from services.fhir.scopes import Grants, Scope


def test_module_examples_hold():
    assert doctest.testmod(services.fhir.scopes).failed == 0


@pytest.mark.parametrize(("text", "context", "resource_type", "letters"), [
    ("system/CarePlan.rs", "system", "CarePlan", "rs"),
    ("user/ActivityDefinition.cruds", "user", "ActivityDefinition", "cruds"),
    ("patient/CarePlan.r", "patient", "CarePlan", "r"),
    ("system/CarePlan.c", "system", "CarePlan", "c"),
    ("system/*.cud", "system", "*", "cud"),
    ("system/CarePlan.read", "system", "CarePlan", "rs"),
    ("user/Task.write", "user", "Task", "cud"),
    ("patient/*.*", "patient", "*", "cruds"),
])
def test_resource_scopes_are_read_in_v2_and_v1_forms(text, context, resource_type, letters):
    assert Scope.parse(text) == Scope(context, resource_type, frozenset(letters))


@pytest.mark.parametrize("text", [
    "openid", "fhirUser", "launch/patient", "offline_access",
    "system/CarePlan.sr",  # letters out of order
    "system/CarePlan.rr",  # repeated
    "system/CarePlan.x", "system/CarePlan.", "system/carePlan.rs", "admin/CarePlan.rs",
    "patient/Observation.rs?category=laboratory",  # granular scopes grant nothing rather than too much
    "system/CarePlan.rs extra",
])
def test_anything_else_grants_nothing(text):
    assert Scope.parse(text) is None


def test_grants_come_from_a_scope_string_or_a_list():
    by_string = Grants.parse("system/CarePlan.rs openid user/Task.u")
    by_list = Grants.parse(["system/CarePlan.rs", "openid", "user/Task.u"])
    assert by_string == by_list
    assert by_string.contexts("CarePlan", "s") == {"system"}
    assert by_string.contexts("CarePlan", "c") == frozenset()
    assert by_string.contexts("Task", "u") == {"user"}
    assert Grants.parse(None).contexts("CarePlan", "r") == frozenset()


def test_a_wildcard_type_covers_every_type_but_only_its_letters():
    grants = Grants.parse("system/*.rs")
    assert grants.contexts("ActivityDefinition", "r") == {"system"}
    assert grants.contexts("ActivityDefinition", "c") == frozenset()
