"""At most one active plan per patient and body site, held by the database.

`careplan_assessment_plan.active` mirrors whether each plan's current version is
active, and a partial unique index on (subject, body_site) where it is true makes a
second active plan for one site impossible, whichever request tries to write it.

Existing rows are flagged from the stored plans. Where several plans of one site are
active already, only the newest is flagged, so that the index can be built; the next
reassessment of that site revokes it as usual.

Revision ID: careplan_0004
Revises: careplan_0003
Create Date: 2026-12-04
"""

import json
import logging

import sqlalchemy as sa
from alembic import op

revision = "careplan_0004"
down_revision = "careplan_0003"
branch_labels = None
depends_on = None

log = logging.getLogger("cicatrix.db")


def upgrade() -> None:
    with op.batch_alter_table("careplan_assessment_plan") as batch:
        batch.add_column(sa.Column("active", sa.Boolean, nullable=False, server_default=sa.false()))
    connection = op.get_bind()
    rows = connection.execute(sa.text(
        "SELECT a.subject, a.body_site, a.careplan_id, r.content FROM careplan_assessment_plan a "
        "JOIN careplan_resource r ON r.resource_type = 'CarePlan' AND r.id = a.careplan_id AND r.deleted = :no "
        "ORDER BY a.created DESC"), {"no": False}).all()
    flagged: set[tuple[str, str]] = set()
    extra = 0
    for subject, body_site, careplan_id, content in rows:
        if json.loads(content).get("status") != "active":
            continue
        if (subject, body_site) in flagged:
            extra += 1
            continue
        flagged.add((subject, body_site))
        connection.execute(sa.text("UPDATE careplan_assessment_plan SET active = :yes WHERE careplan_id = :id"),
                           {"yes": True, "id": careplan_id})
    if extra:
        log.warning("older active plans left unflagged", extra={"count": extra})
    op.create_index("uq_careplan_assessment_plan_active", "careplan_assessment_plan", ["subject", "body_site"],
                    unique=True, sqlite_where=sa.text("active"), postgresql_where=sa.text("active"))


def downgrade() -> None:
    op.drop_index("uq_careplan_assessment_plan_active", table_name="careplan_assessment_plan")
    with op.batch_alter_table("careplan_assessment_plan") as batch:
        batch.drop_column("active")
