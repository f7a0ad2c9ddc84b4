"""Plans drafted from one catalog answer share what its content says about each action, and nothing of a patient."""

from __future__ import annotations

from typing import Any

import pytest

from services.careplan.examples import EXAMPLE_SETTINGS
from services.careplan.planning import ActivityTerms
from tests.careplan.conftest import PlannerRunner, example

pytestmark = pytest.mark.xdist_group("planner")
ATROPHIC = {"system": "https://fhir.cicatrix.org/CodeSystem/scar-type", "code": "atrophic"}


def _phonophoresis(plan: dict[str, Any]) -> str:
    """The narrative's line offering phonophoresis as an alternative (its screened preparations)."""
    div: str = plan["text"]["div"]
    return next(item.split("</li>")[0] for item in div.split("<li>")
                if item.startswith("Phonophoresis with the scar ointments"))


def _terms(runner: PlannerRunner) -> dict[int, ActivityTerms]:
    protocol = runner.loop.run_until_complete(runner.planner.knowledge.protocol_for(ATROPHIC))
    assert protocol is not None
    return protocol.terms


def test_a_protocols_actions_are_read_once_and_each_patient_is_screened_alone(runner: PlannerRunner) -> None:
    calendar = EXAMPLE_SETTINGS.calendar()
    _, camphor = runner.plan(example("atrophic-allergy-camphor"), calendar)
    terms = dict(_terms(runner))
    assert terms and all(isinstance(t, ActivityTerms) for t in terms.values()), "the first plan read the actions"

    _, plain = runner.plan(example("atrophic-chest-visible-vessels"), calendar)
    _, camphor_again = runner.plan(example("atrophic-allergy-camphor"), calendar)

    shared = _terms(runner)
    assert shared.keys() == terms.keys() and all(shared[k] is terms[k] for k in terms), "later plans reuse them"
    assert "Kapilar cream-balm" in _phonophoresis(plain)
    assert "Kapilar cream-balm" not in _phonophoresis(camphor), "camphor allergy leaves the camphor balm out"
    assert camphor_again["text"] == camphor["text"], "a plan in between changes nothing of the next one"
    assert camphor_again["activity"] == camphor["activity"]
