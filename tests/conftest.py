"""Suite-wide fixtures: the R4 validator, the EHR sandbox and the database matrix live in tests/support."""

pytest_plugins = [
    "tests.support.validator",
    "tests.support.sandbox",
    "tests.support.databases",
]
