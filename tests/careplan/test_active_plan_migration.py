"""The migration to one active plan per patient and body site flags existing plans and builds the unique index."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from services.careplan.app import MIGRATIONS
from services.fhir.db import make_engine


def _plan(connection, plan_id: str, site: str, status: str, created: datetime) -> None:
    content = json.dumps({"resourceType": "CarePlan", "id": plan_id, "status": status}).encode()
    connection.execute(text(
        "INSERT INTO careplan_resource (resource_type, id, version_id, last_updated, deleted, content) "
        "VALUES ('CarePlan', :id, 1, :at, :no, :content)"), {"id": plan_id, "at": created, "no": False,
                                                              "content": content})
    connection.execute(text(
        "INSERT INTO careplan_assessment_plan (subject, assessment_key, body_site, careplan_id, "
        "questionnaire_response_id, created) VALUES ('Patient/p1', :id, :site, :id, :id, :at)"),
        {"id": plan_id, "site": site, "at": created})


def test_existing_plans_are_flagged_and_only_the_newest_active_one_per_site(database_url):
    engine = make_engine(database_url)
    try:
        command.upgrade(MIGRATIONS.config(engine), "careplan_0003")
        start = datetime(2026, 1, 1, tzinfo=UTC)
        with engine.begin() as connection:
            _plan(connection, "old-active", "chest", "active", start)
            _plan(connection, "new-active", "chest", "active", start + timedelta(days=1))
            _plan(connection, "revoked", "chest", "revoked", start + timedelta(days=2))
            _plan(connection, "other-site", "shin", "active", start)
        MIGRATIONS.upgrade(engine)
        with engine.connect() as connection:
            flagged = connection.execute(text(
                "SELECT careplan_id FROM careplan_assessment_plan WHERE active ORDER BY careplan_id")).scalars().all()
        assert flagged == ["new-active", "other-site"]
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(text("UPDATE careplan_assessment_plan SET active = :yes WHERE careplan_id = :id"),
                               {"yes": True, "id": "old-active"})
    finally:
        engine.dispose()
