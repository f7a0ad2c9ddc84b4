"""Resource contents compressed with lz4 on PostgreSQL (`compress_contents_with_lz4`).

Revision ID: catalog_0002
Revises: catalog_0001
Create Date: 2026-12-05
"""

from services.fhir.migration_ops import compress_contents_with_lz4, default_content_compression

revision = "catalog_0002"
down_revision = "catalog_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    compress_contents_with_lz4("catalog")


def downgrade() -> None:
    default_content_compression("catalog")
