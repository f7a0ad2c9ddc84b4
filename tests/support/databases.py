"""Fixtures: databases (being written)."""
