"""Assessment-to-plan index for idempotent generation and reassessment.

Revision ID: careplan_0002
Revises: careplan_0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "careplan_0002"
down_revision = "careplan_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "careplan_assessment_plan",
        sa.Column("subject", sa.String(128), primary_key=True),
        sa.Column("assessment_key", sa.String(512), primary_key=True),
        sa.Column("body_site", sa.String(512), nullable=False),
        sa.Column("careplan_id", sa.String(64), nullable=False),
        sa.Column("questionnaire_response_id", sa.String(64), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_careplan_assessment_plan_site", "careplan_assessment_plan", ["subject", "body_site"])


def downgrade() -> None:
    op.drop_table("careplan_assessment_plan")
