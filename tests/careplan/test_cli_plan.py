"""`cicatrix plan FILE --local`: the plan as a terminal table, without a running stack."""

from __future__ import annotations

import pytest

from services.careplan.examples import EXAMPLES_DIR
from services.cli import main

pytestmark = pytest.mark.xdist_group("planner")


def test_plan_prints_what_when_and_why(capsys):
    code = main(["plan", str(EXAMPLES_DIR / "atrophic-pregnant.parameters.json"), "--local", "--start", "2026-06-01"])
    out = capsys.readouterr().out
    assert code == 0
    assert "2026-06-01" in out
    assert "AHA peels" in out and "Vacuum massage" in out
    assert "Left out (why):" in out and "pregnant" in out


def test_plan_of_an_unsupported_scar_says_why(capsys):
    code = main(["plan", str(EXAMPLES_DIR / "keloid-unsupported.parameters.json"), "--local"])
    assert code == 1
    assert "no treatment protocol" in capsys.readouterr().out
