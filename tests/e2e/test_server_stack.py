"""`cicatrix serve` runs on httptools and uvloop by default; `*_HTTP=h11` and `*_LOOP=asyncio` select the
pure-Python stack. Which one a process really runs is read from the shared objects it has mapped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from services.catalog.settings import CatalogSettings
from tests.support.servers import free_port

pytestmark = pytest.mark.xdist_group("stack")
ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def served_catalog(tmp_path: Path, **settings: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {**os.environ, "CATALOG_DATABASE_URL": f"sqlite:///{tmp_path}/catalog.db", "CATALOG_PORT": str(port),
           "CATALOG_LOG_LEVEL": "WARNING", **{f"CATALOG_{name}": value for name, value in settings.items()}}
    process = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "catalog"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read().decode()[-3000:] if process.stderr else ""
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the catalog did not start"
            time.sleep(0.2)
        yield base, process.pid
    finally:
        process.terminate()
        process.wait(timeout=20)


def mapped_extensions(pid: int) -> set[str]:
    """Names of the compiled modules a process has loaded (`uvloop`, `httptools`, ...)."""
    with open(f"/proc/{pid}/maps") as handle:
        paths = {line.split()[-1] for line in handle if line.rstrip().endswith(".so")}
    return {part for path in paths for part in Path(path).parts if part in {"uvloop", "httptools"}}


def test_serve_runs_on_httptools_and_uvloop_by_default(tmp_path):
    with served_catalog(tmp_path) as (base, pid):
        assert httpx.get(f"{base}/fhir/metadata").status_code == 200
        assert mapped_extensions(pid) == {"uvloop", "httptools"}


def test_serve_runs_on_h11_and_asyncio_when_configured(tmp_path):
    with served_catalog(tmp_path, HTTP="h11", LOOP="asyncio") as (base, pid):
        assert httpx.get(f"{base}/fhir/metadata").status_code == 200
        assert mapped_extensions(pid) == set()


@pytest.mark.parametrize("name, value", [("HTTP", "websockets"), ("LOOP", "trio")])
def test_unknown_server_stack_is_refused_at_start(name, value, monkeypatch):
    monkeypatch.setenv(f"CATALOG_{name}", value)
    with pytest.raises(ValidationError):
        CatalogSettings()
