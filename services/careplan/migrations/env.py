"""Alembic environment of the careplan (run through `cicatrix migrate` or at start-up)."""

from alembic import context

from services.careplan.tables import metadata
from services.fhir.db import run_migrations_from_env

run_migrations_from_env(context, metadata)
