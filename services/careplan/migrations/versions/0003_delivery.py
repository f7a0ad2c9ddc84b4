"""The delivery outbox: one row per CarePlan version on its way to the EHR.

Revision ID: careplan_0003
Revises: careplan_0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "careplan_0003"
down_revision = "careplan_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    op.create_table(
        "careplan_delivery",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("careplan_id", sa.String(64), nullable=False),
        sa.Column("careplan_version", sa.Integer, nullable=False),
        sa.Column("subject", sa.String(256)),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("shape", sa.String(16)),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created", when, nullable=False),
        sa.Column("updated", when, nullable=False),
        sa.Column("window_start", when, nullable=False),
        sa.Column("next_attempt_at", when, nullable=False),
        sa.Column("first_attempt_at", when),
        sa.Column("finished_at", when),
        sa.Column("claimed_by", sa.String(128)),
        sa.Column("claimed_until", when),
        sa.Column("lease", sa.Integer, nullable=False),
        sa.Column("ambiguous", sa.Boolean, nullable=False),
        sa.Column("last_status", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("outcome", sa.Text),
        sa.Column("ehr_type", sa.String(64)),
        sa.Column("ehr_id", sa.String(128)),
        sa.Column("ehr_version", sa.String(64)),
        sa.Column("ehr_outputs", sa.Text),
        sa.Column("readback", sa.Text),
        sa.Column("row_version", sa.Integer, nullable=False),
        sa.UniqueConstraint("careplan_id", "careplan_version", name="uq_careplan_delivery_version"),
    )
    op.create_index("ix_careplan_delivery_due", "careplan_delivery", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_table("careplan_delivery")
