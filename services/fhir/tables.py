"""Column sets of the versioned resource store, as SQLModel mixins.

Each service declares its own tables from these (catalog_resource,
careplan_resource, ...), so a service's database holds only its own data while the
storage and search code in `services.fhir.store` serves both.

- *Resource*: the current version of each resource, with its canonical JSON bytes
  exactly as served (reads never re-serialise).
- *ResourceVersion*: every version ever written, for vread and history.
- *SearchIndex*: one row per extracted search value, so searches are index lookups
  rather than scans of JSON.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, LargeBinary, Table, inspect
from sqlmodel import Field, SQLModel


def core_table(model: type[SQLModel]) -> Table:
    """The Core table of a table model, for statements on columns alone. SQLModel sets `__table__` on every
    table model but does not declare it, so type checkers know the table only through the mapper."""
    table = inspect(model).local_table
    assert isinstance(table, Table), f"{model.__name__} is not a table model"
    return table


class ResourceColumns(SQLModel):
    resource_type: str = Field(primary_key=True, max_length=64)
    id: str = Field(primary_key=True, max_length=64)
    version_id: int
    last_updated: datetime = Field(sa_type=DateTime(timezone=True), nullable=False, index=True)
    deleted: bool = False
    url: str | None = Field(default=None, max_length=512, index=True)
    version: str | None = Field(default=None, max_length=64)
    content: bytes = Field(sa_type=LargeBinary, nullable=False)


class ResourceVersionColumns(SQLModel):
    resource_type: str = Field(primary_key=True, max_length=64)
    id: str = Field(primary_key=True, max_length=64)
    version_id: int = Field(primary_key=True)
    last_updated: datetime = Field(sa_type=DateTime(timezone=True), nullable=False)
    deleted: bool = False
    method: str = Field(max_length=8)
    content: bytes | None = Field(default=None, sa_type=LargeBinary, nullable=True)


class SearchIndexColumns(SQLModel):
    pk: int | None = Field(default=None, primary_key=True)
    resource_type: str = Field(max_length=64)
    resource_id: str = Field(max_length=64)
    param: str = Field(max_length=64)
    system: str | None = Field(default=None, max_length=512)
    value: str | None = Field(default=None, max_length=1024)
    norm: str | None = Field(default=None, max_length=1024)
    low: datetime | None = Field(default=None, sa_type=DateTime(timezone=True), nullable=True)
    high: datetime | None = Field(default=None, sa_type=DateTime(timezone=True), nullable=True)
