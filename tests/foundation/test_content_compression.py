"""On PostgreSQL both services store resource contents compressed with lz4 (services.fhir.migration_ops)."""

from __future__ import annotations

import json

import pytest
from alembic import command
from sqlalchemy import text

from services.careplan.app import MIGRATIONS as CAREPLAN_MIGRATIONS
from services.catalog.app import MIGRATIONS as CATALOG_MIGRATIONS
from services.fhir.db import make_engine

COMPRESSION = text("SELECT attrelid::regclass::text, attcompression FROM pg_attribute "
                   "WHERE attname = 'content' AND attrelid::regclass::text LIKE :prefix ORDER BY 1")


@pytest.mark.parametrize(("migrations", "prefix", "before"), [(CAREPLAN_MIGRATIONS, "careplan", "careplan_0005"),
                                                              (CATALOG_MIGRATIONS, "catalog", "catalog_0001")])
def test_contents_are_compressed_with_lz4_and_read_back(postgres_database_url, migrations, prefix, before):
    engine = make_engine(postgres_database_url)
    try:
        with engine.connect() as connection:
            if not connection.execute(text("SELECT 'lz4' = ANY(enumvals) FROM pg_settings "
                                           "WHERE name = 'default_toast_compression'")).scalar():
                pytest.skip("this PostgreSQL was built without lz4")
        migrations.upgrade(engine)
        large = json.dumps({"resourceType": "Basic", "text": "scar " * 20_000}).encode()  # compressed
        with engine.begin() as connection:
            assert connection.execute(COMPRESSION, {"prefix": f"{prefix}_resource%"}).all() == [
                (f"{prefix}_resource", "l"), (f"{prefix}_resource_version", "l")]
            connection.execute(text(f"INSERT INTO {prefix}_resource (resource_type, id, version_id, last_updated, "
                                    "deleted, content) VALUES ('Basic', 'b', 1, now(), false, :content)"),
                               {"content": large})
        with engine.connect() as connection:
            assert connection.execute(text(f"SELECT pg_column_compression(content), content FROM {prefix}_resource"
                                           )).one() == ("lz4", large)
        command.downgrade(migrations.config(engine), before)
        with engine.connect() as connection:
            assert {row[1] for row in connection.execute(COMPRESSION, {"prefix": f"{prefix}_resource%"})} == {""}
    finally:
        engine.dispose()
