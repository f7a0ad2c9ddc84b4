"""Schema operations shared by the services' Alembic revisions.

Both services store resources in the same three-table shape (see
`services.fhir.tables`), so both take the same revisions of it. Each function is
the frozen DDL of the revisions that call it: later schema changes go into new
revisions and new functions, never into these.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

log = logging.getLogger("cicatrix.db")


def create_resource_tables(prefix: str) -> None:
    op.create_table(
        f"{prefix}_resource",
        sa.Column("resource_type", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("url", sa.String(512), nullable=True),
        sa.Column("version", sa.String(64), nullable=True),
        sa.Column("content", sa.LargeBinary, nullable=False),
    )
    op.create_index(f"ix_{prefix}_resource_last_updated", f"{prefix}_resource", ["last_updated"])
    op.create_index(f"ix_{prefix}_resource_url", f"{prefix}_resource", ["url"])
    op.create_index(f"ix_{prefix}_resource_type_updated", f"{prefix}_resource", ["resource_type", "last_updated"])
    op.create_index(f"ix_{prefix}_resource_canonical", f"{prefix}_resource", ["url", "version"])
    op.create_table(
        f"{prefix}_resource_version",
        sa.Column("resource_type", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("version_id", sa.Integer, primary_key=True),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=True),
    )
    op.create_table(
        f"{prefix}_search_index",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("system", sa.String(512), nullable=True),
        sa.Column("value", sa.String(1024), nullable=True),
        sa.Column("norm", sa.String(1024), nullable=True),
        sa.Column("low", sa.DateTime(timezone=True), nullable=True),
        sa.Column("high", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(f"ix_{prefix}_search_value", f"{prefix}_search_index", ["resource_type", "param", "value"])
    op.create_index(f"ix_{prefix}_search_norm", f"{prefix}_search_index", ["resource_type", "param", "norm"])
    op.create_index(f"ix_{prefix}_search_resource", f"{prefix}_search_index", ["resource_type", "resource_id"])


def drop_resource_tables(prefix: str) -> None:
    for table in ("search_index", "resource_version", "resource"):
        op.drop_table(f"{prefix}_{table}")


def compress_contents_with_lz4(prefix: str) -> None:
    """Store new resource contents compressed with lz4 where PostgreSQL was built with it (pglz otherwise, and
    nothing changes on other databases). A care plan is tens of kilobytes of JSON, written twice (the current
    version and the history), and pglz spent more CPU compressing it than the rest of the write; lz4 compresses
    and decompresses several times faster. Contents already stored keep their compression until rewritten."""
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    if not bind.execute(sa.text("SELECT 'lz4' = ANY(enumvals) FROM pg_settings "
                                "WHERE name = 'default_toast_compression'")).scalar():
        log.warning("PostgreSQL has no lz4: resource contents stay compressed with pglz")
        return
    for table in (f"{prefix}_resource", f"{prefix}_resource_version"):
        op.execute(f"ALTER TABLE {table} ALTER COLUMN content SET COMPRESSION lz4")


def default_content_compression(prefix: str) -> None:
    """Undo `compress_contents_with_lz4`: new contents take the server's default compression again."""
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in (f"{prefix}_resource", f"{prefix}_resource_version"):
        op.execute(f"ALTER TABLE {table} ALTER COLUMN content SET COMPRESSION DEFAULT")
