"""Fixtures: validator (being written)."""
