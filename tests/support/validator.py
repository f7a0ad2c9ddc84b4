"""Pytest plugin: the independent FHIR R4 validator as fixtures (see tests/support/r4.py).

Why a plugin: every resource the services emit must be checked against R4 by something other than the
R4B models that built it. One Node validator process is started per pytest session, i.e. one per
pytest-xdist worker, and reused by every test of that worker.

Fixtures:
* ``r4_validator`` (session) - an :class:`~tests.support.r4.R4Validator`: ``errors(resource)``,
  ``issues(resource)``, ``assert_valid(resource)``; resources may be dicts, JSON text/bytes or R4B models.
* ``assert_r4`` - shorthand for ``r4_validator.assert_valid``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.r4 import R4Validator, R4ValidatorUnavailable, Resource


@pytest.fixture(scope="session")
def r4_validator() -> Iterator[R4Validator]:
    """Starts the Node validator once per session; a missing toolchain fails the tests, never skips them."""
    validator = R4Validator()
    try:
        validator.start()
    except R4ValidatorUnavailable as exc:
        pytest.fail(f"FHIR R4 validator unavailable: {exc}", pytrace=False)
    try:
        yield validator
    finally:
        validator.close()


@pytest.fixture
def assert_r4(r4_validator: R4Validator) -> Callable[[Resource], None]:
    """``assert_r4(resource)`` raises AssertionError listing every R4 problem of the resource."""
    return r4_validator.assert_valid
