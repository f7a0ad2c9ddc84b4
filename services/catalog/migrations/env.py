"""Alembic environment of the catalog (run through `cicatrix migrate` or at start-up)."""

from alembic import context

from services.catalog.tables import metadata
from services.fhir.db import run_migrations_from_env

run_migrations_from_env(context, metadata)
