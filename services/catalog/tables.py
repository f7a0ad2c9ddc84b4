"""The catalog's tables: versioned resources and their search index."""

from __future__ import annotations

from sqlalchemy import Index
from sqlmodel import SQLModel

from services.fhir.tables import ResourceColumns, ResourceVersionColumns, SearchIndexColumns

metadata = SQLModel.metadata


class CatalogResource(ResourceColumns, table=True):
    __tablename__ = "catalog_resource"
    __table_args__ = (Index("ix_catalog_resource_type_updated", "resource_type", "last_updated"),
                      Index("ix_catalog_resource_canonical", "url", "version"))
    # ix_catalog_resource_last_updated and ix_catalog_resource_url come from the column definitions


class CatalogResourceVersion(ResourceVersionColumns, table=True):
    __tablename__ = "catalog_resource_version"


class CatalogSearchIndex(SearchIndexColumns, table=True):
    __tablename__ = "catalog_search_index"
    __table_args__ = (
        Index("ix_catalog_search_value", "resource_type", "param", "value"),
        Index("ix_catalog_search_norm", "resource_type", "param", "norm"),
        Index("ix_catalog_search_resource", "resource_type", "resource_id"),
    )
