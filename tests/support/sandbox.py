"""Pytest plugin: the EHR sandbox (tools/ehr-sandbox) as fixtures.

Tests that talk to "the EHR" talk to a real FHIR R4 server over HTTP, not a mock: a Node process
running ``tools/ehr-sandbox/server.js``. Each pytest process (each xdist worker) starts its own
sandbox on a free port, once per session; every test that asks for ``ehr_sandbox`` gets it reset
(empty store, no faults, empty request log, startup config).

Fixtures:
  ``ehr_sandbox_process`` (session)  the running process: ``.base_url`` (.../fhir), ``.root_url``,
                                     ``.control_url``
  ``ehr_sandbox`` (function)         an :class:`EhrSandbox` helper, freshly reset

Missing Node.js or ``tools/ehr-sandbox/node_modules`` fails the test with the command that fixes
it: these tests must never be skipped silently.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SANDBOX_DIR = REPO_ROOT / "tools" / "ehr-sandbox"
READY_LINE = re.compile(r"ehr-sandbox listening on (http://\S+)/fhir")
START_TIMEOUT_S = 30.0

# Python-friendly fault and config keys -> the control API's JSON keys.
_CAMEL = {"retry_after": "retryAfter", "delay_ms": "delayMs", "latency_ms": "latencyMs"}


@dataclass
class SandboxProcess:
    """A running sandbox server."""

    process: subprocess.Popen[str]
    root_url: str
    stderr_path: Path

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/fhir"

    @property
    def control_url(self) -> str:
        return f"{self.root_url}/_control"

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")


class EhrSandbox:
    """Drives one sandbox through its control API (see tools/ehr-sandbox/README.md)."""

    def __init__(self, proc: SandboxProcess) -> None:
        self.base_url = proc.base_url
        self.control_url = proc.control_url
        self.root_url = proc.root_url
        self._http = httpx.Client(base_url=proc.control_url, timeout=10.0)

    def queue_fault(self, **fault: Any) -> dict[str, Any]:
        """Appends one fault, e.g. ``queue_fault(action="status", status=503, retry_after="2",
        match={"method": "POST", "path": "/fhir"}, times=1)``. Returns the fault as the sandbox stored it."""
        response = self._http.post("/faults", json={"faults": [_camel(fault)]})
        _check(response)
        return response.json()["faults"][0]

    def faults(self) -> list[dict[str, Any]]:
        """Faults still pending."""
        return self._get("/faults")["faults"]

    def clear_faults(self) -> None:
        _check(self._http.delete("/faults"))

    def requests(self) -> list[dict[str, Any]]:
        """The request log, oldest first: method, path, query, headers, body, status, dropped, fault, refusal,
        time."""
        return self._get("/requests")["requests"]

    def refusals(self) -> list[dict[str, Any]]:
        """The logged requests the sandbox refused for using a capability its CapabilityStatement does not
        declare, or for breaking a vendor rule: each has ``refusal == {"kind": ..., "detail": ...}``."""
        return [entry for entry in self.requests() if entry["refusal"] is not None]

    def clear_requests(self) -> None:
        _check(self._http.delete("/requests"))

    def store(self, type: str | None = None) -> list[dict[str, Any]]:  # noqa: A002 - mirrors ?type=
        """Current versions of every stored resource (of one type if given), in creation order."""
        return self._get("/store", params={"type": type} if type else None)["resources"]

    def reset(self) -> None:
        """Empties store, faults and request log, and restores the startup config."""
        _check(self._http.post("/reset"))

    def configure(self, **config: Any) -> dict[str, Any]:
        """Sets runtime config: ``token`` (str or None), ``latency_ms`` / ``latencyMs`` (int), ``profile`` (a
        capability profile name, see tools/ehr-sandbox/README.md), ``smart`` (dict or None)."""
        response = self._http.post("/config", json=_camel(config))
        _check(response)
        return response.json()

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        response = self._http.get(path, params=params)
        _check(response)
        return response.json()


def _camel(values: dict[str, Any]) -> dict[str, Any]:
    return {_CAMEL.get(key, key): value for key, value in values.items()}


def _check(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise AssertionError(
            f"EHR sandbox control API: {response.request.method} {response.request.url} "
            f"-> {response.status_code} {response.text}"
        )


def _require_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("The EHR sandbox needs Node.js 20+ on PATH (node not found).", pytrace=False)
    if not (SANDBOX_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        pytest.fail(
            f"The EHR sandbox's dependencies are not installed: run `make deps` (or `cd {SANDBOX_DIR} && npm ci`).",
            pytrace=False,
        )
    return node


def start_sandbox(env: dict[str, str] | None = None) -> SandboxProcess:
    """Starts a sandbox on a free port and waits until it accepts connections."""
    node = _require_node()
    stderr_file = tempfile.NamedTemporaryFile(prefix="ehr-sandbox-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [node, str(SANDBOX_DIR / "server.js")],
        cwd=SANDBOX_DIR,
        env={**os.environ, "EHR_SANDBOX_HOST": "127.0.0.1", "EHR_SANDBOX_PORT": "0", **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr_file,
        text=True,
    )
    stderr_file.close()
    stderr_path = Path(stderr_file.name)

    first_line: list[str] = []
    reader = threading.Thread(target=_read_first_line_then_drain, args=(process, first_line), daemon=True)
    reader.start()
    reader_deadline = time.monotonic() + START_TIMEOUT_S
    while not first_line and process.poll() is None and time.monotonic() < reader_deadline:
        time.sleep(0.02)

    match = READY_LINE.search(first_line[0]) if first_line else None
    if match is None:
        _stop(process)
        pytest.fail(
            "The EHR sandbox did not start "
            f"(exit code {process.returncode}, first line {first_line[:1]!r}):\n"
            f"{stderr_path.read_text(encoding='utf-8', errors='replace')}",
            pytrace=False,
        )
    proc = SandboxProcess(process=process, root_url=match.group(1), stderr_path=stderr_path)
    _wait_until_healthy(proc)
    return proc


def _read_first_line_then_drain(process: subprocess.Popen[str], first_line: list[str]) -> None:
    assert process.stdout is not None
    first_line.append(process.stdout.readline())
    for _ in process.stdout:  # keep the pipe from filling up
        pass


def _wait_until_healthy(proc: SandboxProcess) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if httpx.get(f"{proc.control_url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.process.poll() is not None:
            _stop(proc.process)
            pytest.fail(f"The EHR sandbox never became healthy:\n{proc.stderr()}", pytrace=False)
        time.sleep(0.05)


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def stop_sandbox(proc: SandboxProcess) -> None:
    _stop(proc.process)
    proc.stderr_path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def ehr_sandbox_process() -> Iterator[SandboxProcess]:
    """One sandbox process per pytest session (per xdist worker), on its own free port."""
    proc = start_sandbox()
    try:
        yield proc
    finally:
        stop_sandbox(proc)


@pytest.fixture
def ehr_sandbox(ehr_sandbox_process: SandboxProcess) -> Iterator[EhrSandbox]:
    """The session's sandbox, reset for this test."""
    if ehr_sandbox_process.process.poll() is not None:
        pytest.fail(
            f"The EHR sandbox exited (code {ehr_sandbox_process.process.returncode}):\n{ehr_sandbox_process.stderr()}",
            pytrace=False,
        )
    sandbox = EhrSandbox(ehr_sandbox_process)
    sandbox.reset()
    try:
        yield sandbox
    finally:
        sandbox.close()
