"""`cicatrix serve` with several worker processes (CATALOG_WORKERS / CAREPLAN_WORKERS, PostgreSQL only)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from services.careplan.settings import CareplanSettings
from tests.support.databases import drop_postgres_schema, fresh_postgres_schema, require_postgres
from tests.support.servers import free_port

pytestmark = pytest.mark.xdist_group("stack")
ROOT = Path(__file__).resolve().parents[2]


def children(pid: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == pid]


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_two_catalog_workers_share_one_migrated_loaded_database():
    """Migrations and content run once, before the workers start (not twice at the same moment); both
    workers answer from the same database."""
    require_postgres()
    schema, url = fresh_postgres_schema()
    port = free_port()
    env = {**os.environ, "CATALOG_DATABASE_URL": url, "CATALOG_PORT": str(port), "CATALOG_WORKERS": "2",
           "CATALOG_LOG_LEVEL": "WARNING"}
    process = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "catalog"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.stderr.read().decode()[-3000:] if process.stderr else ""
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200 and len(children(process.pid)) >= 2:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "two catalog workers did not start"
            time.sleep(0.2)
        with httpx.Client(base_url=base, headers={"Accept": "application/fhir+json"}) as client:
            bundle = client.get("/fhir/ActivityDefinition", params={"_total": "accurate", "_count": "1"}).json()
            assert bundle["total"] > 10, "the content was loaded"
            statuses = {client.get(f"/fhir/ActivityDefinition/{bundle['entry'][0]['resource']['id']}").status_code
                        for _ in range(20)}
            assert statuses == {200}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=30) == 0
        finally:
            process.kill()
            drop_postgres_schema(schema)


def test_several_workers_are_refused_on_sqlite(tmp_path):
    with pytest.raises(ValidationError, match="CAREPLAN_WORKERS=2 needs PostgreSQL"):
        CareplanSettings(DATABASE_URL=f"sqlite:///{tmp_path}/c.db", WORKERS=2)
