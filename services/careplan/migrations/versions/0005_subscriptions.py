"""Topic-based subscriptions: the subscriptions and their notification outbox.

Revision ID: careplan_0005
Revises: careplan_0004
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "careplan_0005"
down_revision = "careplan_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    op.create_table(
        "careplan_subscription",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("topic", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("endpoint", sa.Text, nullable=False),
        sa.Column("headers", sa.Text, nullable=False),
        sa.Column("content", sa.String(16), nullable=False),
        sa.Column("heartbeat_seconds", sa.Integer),
        sa.Column("timeout_seconds", sa.Float),
        sa.Column("max_count", sa.Integer),
        sa.Column("filter_patient", sa.String(256)),
        sa.Column("filter_category", sa.String(512)),
        sa.Column("owner_patient", sa.String(64)),
        sa.Column("end_at", when),
        sa.Column("events_since_start", sa.Integer, nullable=False),
        sa.Column("resource", sa.Text, nullable=False),
        sa.Column("created", when, nullable=False),
        sa.Column("updated", when, nullable=False),
        sa.Column("heartbeat_due_at", when),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("row_version", sa.Integer, nullable=False),
    )
    op.create_index("ix_careplan_subscription_topic", "careplan_subscription", ["topic", "status"])
    op.create_table(
        "careplan_subscription_notification",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("subscription_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("topic", sa.String(256), nullable=False),
        sa.Column("focus_type", sa.String(32)),
        sa.Column("focus_id", sa.String(64)),
        sa.Column("focus_version", sa.Integer),
        sa.Column("interaction", sa.String(8)),
        sa.Column("occurred", when, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
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
        sa.Column("created", when, nullable=False),
        sa.Column("updated", when, nullable=False),
        sa.Column("row_version", sa.Integer, nullable=False),
        sa.UniqueConstraint("subscription_id", "seq", name="uq_careplan_notification_seq"),
    )
    op.create_index("ix_careplan_notification_due", "careplan_subscription_notification", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_table("careplan_subscription_notification")
    op.drop_table("careplan_subscription")
