"""The native tools of the benchmark: nginx, the physical baseline, and wrk, the load generator for GET loads.

nginx serving the very bytes Cicatrix answered, as static files from one worker process, is the most a server on
this machine can do for the same answers; bare Starlette on the same uvicorn stack is what Python can do. wrk (C)
drives those loads: the Python generator (`tests/bench/load.py`) saturates one core before nginx does, so it would
understate the baseline. Both come from Debian's packages; `ensure` installs them on first use where the bench
runs as root with apt-get (as on the project's machines), and otherwise says why a figure is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.bench import stack

PACKAGES = {"nginx": "nginx-light", "wrk": "wrk"}


def ensure(tool: str) -> tuple[str | None, str]:
    """The path of `tool` (nginx or wrk), installed from Debian's packages if missing; else (None, why)."""
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin")
    if found:
        return found, ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, f"{tool} is not installed and apt-get cannot run here (install Debian's {PACKAGES[tool]})"
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", PACKAGES[tool]]):
        done = subprocess.run(command, capture_output=True, text=True, env=environment)
        if done.returncode != 0:
            return None, f"apt-get could not install {PACKAGES[tool]}: {done.stderr.strip()[-200:]}"
    # Debian starts the packaged nginx on port 80; the bench runs its own, so the system one is stopped.
    subprocess.run(["service", "nginx", "stop"], capture_output=True)
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin")
    return (found, "") if found else (None, f"{PACKAGES[tool]} installed but {tool} was not found")


@contextmanager
def nginx_static(program: str, bodies: dict[str, bytes]) -> Iterator[stack.Server]:
    """nginx, one worker, answering each path (query string ignored) with its bytes as a static file."""
    root = Path(tempfile.mkdtemp(prefix="nginx-", dir=stack.RESULTS))
    root.chmod(0o755)  # nginx's worker drops root and must read the files
    locations = []
    for path, body in bodies.items():
        name = hashlib.sha256(path.encode()).hexdigest()[:16]
        (root / name).write_bytes(body)
        (root / name).chmod(0o644)
        locations.append(f"location = {urlsplit(path).path} {{ alias {root / name}; }}")
    port = stack.free_port()
    (root / "nginx.conf").write_text(f"""
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type application/fhir+json;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location = /ready {{ return 200; }}
        {chr(10).join(locations)}
    }}
}}
""")
    try:
        with stack.Server("baseline-nginx", ["-p", str(root), "-c", str(root / "nginx.conf"), "-g", "daemon off;"],
                          port=port, program=program, ready_path="/ready") as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


SCRIPT = """
local paths = %s
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter %% #paths) + 1], {["Accept"] = "application/fhir+json"})
end
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format('{"requests": %%d, "micros": %%d, "p50_us": %%d, "p99_us": %%d, "bad_status": %%d, ' ..
    '"socket_errors": %%d}\\n', summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    errors.status, errors.connect + errors.read + errors.write + errors.timeout))
end
"""


def load(program: str, port: int, requests: list[dict[str, Any]], *, connections: int, seconds: float,
         warmup: float, pid: int | None) -> dict[str, Any]:
    """A GET load by wrk (one thread: the other core is the server's), reported like `stack.load`.

    The warm-up is a separate wrk run whose answers are not counted, so the server's CPU time is read around the
    measured run only."""
    paths = [r["path"] for r in requests]
    if any(r.get("method", "GET") != "GET" or r.get("body") or r.get("headers") for r in requests):
        raise ValueError("wrk drives plain GET loads only")
    script = stack.write_json(None)
    with open(script, "w") as handle:
        handle.write(SCRIPT % ("{" + ", ".join(json.dumps(p) for p in paths) + "}"))
    target = f"http://127.0.0.1:{port}"
    try:
        if warmup:
            _wrk(program, script, target, connections, warmup)
        cpu_before = stack.cpu_seconds(pid) if pid else 0.0
        result = _wrk(program, script, target, connections, seconds)
        cpu_after = stack.cpu_seconds(pid) if pid else 0.0
    finally:
        stack.remove(script)
    done, measured = result["requests"], result["micros"] / 1e6
    report: dict[str, Any] = {
        "requests": done, "seconds": round(measured, 3), "rps": round(done / measured, 1) if measured else 0.0,
        "p50_ms": result["p50_us"] / 1000, "p99_ms": result["p99_us"] / 1000,
        # wrk counts answers outside 2xx/3xx; the figures here expect 200 throughout
        "statuses": {"200": done - result["bad_status"], **({"other": result["bad_status"]}
                                                           if result["bad_status"] else {})},
        "errors": result["socket_errors"], "completed": done}
    if pid and done:
        report["cpu_us"] = (cpu_after - cpu_before) / done * 1e6
    return report


def _wrk(program: str, script: str, target: str, connections: int, seconds: float) -> dict[str, Any]:
    done = subprocess.run([program, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", script, target],
                          capture_output=True, text=True, check=True, timeout=seconds + 60)
    last = [line for line in done.stdout.splitlines() if line.startswith("{")][-1]
    parsed: dict[str, Any] = json.loads(last)
    return parsed
