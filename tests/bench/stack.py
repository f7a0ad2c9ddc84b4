"""Processes the benchmark starts and measures: the services, the baselines, the load generator, the database.

Every server runs in its own process on a loopback port; the load generator runs in another. Nothing here is
imported by the services or the test suite.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench-results"
LOGS = RESULTS / "logs"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_url() -> str:
    return os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL") or DEFAULT_POSTGRES_URL


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def postgres_schema(label: str) -> Iterator[str]:
    """A fresh schema in the bench database, dropped afterwards; yields a URL whose connections use it."""
    schema = f"bench_{label}_{uuid.uuid4().hex[:8]}"
    engine = create_engine(postgres_url())
    with engine.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = make_url(postgres_url()).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


class Server:
    """A server process on a loopback port, its stderr in bench-results/logs/NAME.log.

    `command` is run by `program` (this Python by default; Node for the EHR sandbox, nginx for its baseline)."""

    def __init__(self, name: str, command: Sequence[str], *, port: int, env: dict[str, str] | None = None,
                 ready_path: str = "/", program: str | None = None) -> None:
        self.name = name
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log = open(LOGS / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, **(env or {})}
        full_env.setdefault("PYTHONPATH", str(ROOT))
        self.process = subprocess.Popen([program or sys.executable, *command], cwd=ROOT, env=full_env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self._wait(ready_path)

    def _wait(self, path: str, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.base + path, timeout=2).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not start within {seconds:.0f} s; see {self.log.name}")

    def rss_mb(self) -> float:
        """Resident set size of the server process, from /proc (MB = 2**20 bytes)."""
        with open(f"/proc/{self.process.pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def cicatrix(service: str, env: dict[str, str], *, name: str | None = None) -> Server:
    """`cicatrix serve SERVICE` with its settings from the environment, as an operator runs it."""
    port = free_port()
    prefix = service.upper()
    env = {f"{prefix}_PORT": str(port), f"{prefix}_HOST": "127.0.0.1", **env}
    return Server(name or service, ["-m", "services.cli", "serve", service], port=port, env=env,
                  ready_path="/readyz")


@contextmanager
def baseline(kind: str, bodies: dict[str, bytes]) -> Iterator[Server]:
    data = write_json({k: v.decode() for k, v in bodies.items()})
    port = free_port()
    try:
        with Server(f"baseline-{kind}", ["-m", "tests.bench.baselines", kind, str(port), data], port=port,
                    ready_path="/fhir/none") as server:
            yield server
    finally:
        remove(data)


def write_json(value: Any) -> str:
    """A temporary JSON file under bench-results/ (remove it with `remove`)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    descriptor, path = tempfile.mkstemp(suffix=".json", dir=RESULTS)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(value, handle)
    return path


def remove(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process (all its threads) and of its live child processes (uvicorn
    workers), from /proc."""
    total = 0
    for candidate in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{candidate}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    if int(handle.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def load(port: int, requests: list[dict[str, Any]], *, connections: int, seconds: float | None = None,
         warmup: float = 1.0, total: int | None = None, pid: int | None = None) -> dict[str, Any]:
    """Run the load generator in its own process against 127.0.0.1:PORT; returns its JSON report.

    With the server's `pid`, the report also has `cpu_us`: the server's CPU time per response. Unlike
    requests/s it hardly moves when other processes compete for the cores."""
    spec: dict[str, Any] = {"host": "127.0.0.1", "port": port, "connections": connections, "requests": requests}
    if total is not None:
        spec["total"] = total
    else:
        spec |= {"seconds": seconds, "warmup": warmup}
    path = write_json(spec)
    cpu_before = cpu_seconds(pid) if pid else 0.0
    try:
        done = subprocess.run([sys.executable, "-m", "tests.bench.load", path], cwd=ROOT, capture_output=True,
                              text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        os.unlink(path)
    report: dict[str, Any] = json.loads(done.stdout)
    if pid and report["completed"]:
        report["cpu_us"] = (cpu_seconds(pid) - cpu_before) / report["completed"] * 1e6
    return report


def get(path: str, **headers: str) -> dict[str, Any]:
    return {"method": "GET", "path": path, "headers": headers}
