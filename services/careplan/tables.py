"""The care-plan service's tables: stored plans (versioned, searchable)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, false, text
from sqlmodel import Field, SQLModel

from services.fhir.tables import ResourceColumns, ResourceVersionColumns, SearchIndexColumns

metadata = SQLModel.metadata


class CareplanResource(ResourceColumns, table=True):
    __tablename__ = "careplan_resource"
    __table_args__ = (Index("ix_careplan_resource_type_updated", "resource_type", "last_updated"),
                      Index("ix_careplan_resource_canonical", "url", "version"))


class CareplanResourceVersion(ResourceVersionColumns, table=True):
    __tablename__ = "careplan_resource_version"


class CareplanSearchIndex(SearchIndexColumns, table=True):
    __tablename__ = "careplan_search_index"
    __table_args__ = (
        Index("ix_careplan_search_value", "resource_type", "param", "value"),
        Index("ix_careplan_search_norm", "resource_type", "param", "norm"),
        Index("ix_careplan_search_resource", "resource_type", "resource_id"),
    )


class AssessmentPlan(SQLModel, table=True):
    """Which plan an assessment produced: makes `$generate` idempotent and finds the plan a reassessment replaces.

    The primary key is the assessment (its identifier, else its id) for one patient, so two concurrent
    submissions of the same assessment cannot both create a plan: the second insert fails and reads the first.
    `active` mirrors whether the plan's current version is active, and a partial unique index on it holds the
    rule that a patient's body site has at most one active plan, whichever writer (`$generate`, PUT, PATCH) tries
    to break it.
    """

    __tablename__ = "careplan_assessment_plan"
    __table_args__ = (Index("ix_careplan_assessment_plan_site", "subject", "body_site"),
                      Index("uq_careplan_assessment_plan_active", "subject", "body_site", unique=True,
                            sqlite_where=text("active"), postgresql_where=text("active")))

    subject: str = Field(primary_key=True, max_length=128)
    assessment_key: str = Field(primary_key=True, max_length=512)
    body_site: str = Field(max_length=512)
    careplan_id: str = Field(max_length=64)
    questionnaire_response_id: str = Field(max_length=64)
    created: datetime = Field(sa_type=DateTime(timezone=True), nullable=False)
    active: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
