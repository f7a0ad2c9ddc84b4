"""Resource contents compressed with lz4 on PostgreSQL (`compress_contents_with_lz4`).

Revision ID: careplan_0006
Revises: careplan_0005
Create Date: 2026-12-05
"""

from services.fhir.migration_ops import compress_contents_with_lz4, default_content_compression

revision = "careplan_0006"
down_revision = "careplan_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    compress_contents_with_lz4("careplan")


def downgrade() -> None:
    default_content_compression("careplan")
