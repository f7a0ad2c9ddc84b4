"""The care-plan service's tables: stored plans (versioned, searchable)."""

from __future__ import annotations

from sqlalchemy import Index
from sqlmodel import SQLModel

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
