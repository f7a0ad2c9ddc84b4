"""Versioned resource store and search index.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from services.fhir.migration_ops import create_resource_tables, drop_resource_tables

revision = "careplan_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_resource_tables("careplan")


def downgrade() -> None:
    drop_resource_tables("careplan")
