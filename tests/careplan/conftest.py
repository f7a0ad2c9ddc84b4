"""Fixtures for care-plan tests: a real catalog over HTTP and the care-plan app on each database."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.careplan.examples import EXAMPLE_SETTINGS, EXAMPLES_DIR, plan_example
from services.careplan.local import local_planner
from services.careplan.scheduling import ClinicCalendar
from tests.support.apps import careplan_app, catalog_app, running
from tests.support.servers import serve


@pytest.fixture(scope="module")
def catalog_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The catalog with the shipped content, served on a loopback port (SQLite)."""
    folder: Path = tmp_path_factory.mktemp("catalog")
    with serve(catalog_app(f"sqlite:///{folder}/catalog.db", LOG_LEVEL="WARNING")) as url:
        yield url + "/fhir"


@pytest.fixture
def careplan(database_url: str, catalog_url: str) -> Iterator[TestClient]:
    with running(careplan_app(database_url, CATALOG_URL=catalog_url, LOG_LEVEL="WARNING")) as client:
        yield client


def example(name: str) -> dict[str, Any]:
    """A fresh copy of an example `$generate` request."""
    return copy.deepcopy(json.loads((EXAMPLES_DIR / f"{name}.parameters.json").read_text()))


def assessment_of(parameters: dict[str, Any]) -> dict[str, Any]:
    return next(p["resource"] for p in parameters["parameter"] if p["name"] == "assessment")


def answer(parameters: dict[str, Any], link_id: str) -> dict[str, Any]:
    return next(i for i in assessment_of(parameters)["item"] if i["linkId"] == link_id)


class PlannerRunner:
    """The real planner with an in-process catalog, called directly: one event loop for a whole test module, and
    each plan on the clinic calendar it is given."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.context = local_planner(EXAMPLE_SETTINGS)
        self.planner = self.loop.run_until_complete(self.context.__aenter__())

    def plan(self, parameters: dict[str, Any], calendar: ClinicCalendar) -> tuple[str, dict[str, Any]]:
        self.planner.clinic = calendar
        return self.loop.run_until_complete(plan_example(self.planner, parameters))

    def close(self) -> None:
        self.loop.run_until_complete(self.context.__aexit__(None, None, None))
        self.loop.close()


@pytest.fixture(scope="module")
def runner() -> Iterator[PlannerRunner]:
    instance = PlannerRunner()
    yield instance
    instance.close()
