"""Tests of the independent FHIR R4 validator (tools/fhir-validator + tests/support/r4.py)."""
