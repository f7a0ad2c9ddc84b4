"""Fixtures: sandbox (being written)."""
