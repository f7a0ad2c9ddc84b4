"""Independent FHIR R4 validation of what the services emit (see /work/shared/FHIR-REFERENCE.md §0).

Why: the services build resources with `fhir.resources.R4B` models, which accept things that are not
valid R4 (R4B-only elements, illegal codes). `R4Validator` runs three complementary checks:

* ``medplum``   - @medplum/core ``validateResource`` with the R4 4.0.1 StructureDefinitions
                  (unknown properties, cardinality, JSON types, error-level invariants);
* ``bindings``  - every element with a *required* binding against the shipped R4 value sets;
* ``roundtrip`` - R4B ``model_validate`` then ``model_dump_json`` must reproduce the input
                  (primitive regexes, calendar dates, time zones, choice exclusivity, dropped data).

The first two run in one long-lived Node process (``tools/fhir-validator/validate.js``); the third runs
here. Usable outside pytest::

    with R4Validator() as v:
        v.assert_valid(resource)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from pydantic import ValidationError

REPO_ROOT = Path(__file__).resolve().parents[2]
VALIDATOR_DIR = REPO_ROOT / "tools" / "fhir-validator"
CHECKS = ("medplum", "bindings", "roundtrip")

Resource = dict[str, Any] | bytes | str | FHIRAbstractModel


class R4ValidatorUnavailable(RuntimeError):
    """Node or the validator's npm packages are missing: the suite must fail, never skip."""


@dataclass(frozen=True)
class Issue:
    """One finding; ``check`` says which of the three checks produced it."""

    check: str
    severity: str
    path: str
    message: str

    @property
    def is_error(self) -> bool:
        return self.severity in ("error", "fatal")

    def __str__(self) -> str:
        return f"[{self.check}] {self.path or '(root)'}: {self.message}"


class R4Validator:
    """Client of the Node validator plus the R4B round trip; one Node process per instance."""

    def __init__(self, node: str | None = None, validator_dir: Path = VALIDATOR_DIR) -> None:
        self._node = node or shutil.which("node")
        self._dir = validator_dir
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: Any = None
        self._lock = threading.Lock()
        self._next_id = 0

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> R4Validator:
        """Starts Node and waits until it has indexed the R4 definitions."""
        if self._proc is not None:
            return self
        if not self._node:
            raise R4ValidatorUnavailable("node (Node.js 20+) is not on PATH: install it, run `make deps`")
        if not (self._dir / "node_modules" / "@medplum" / "core").is_dir():
            raise R4ValidatorUnavailable(
                f"{self._dir / 'node_modules'} is missing: run `make deps` (npm ci in tools/fhir-validator)"
            )
        # Lives as long as the process; a file (not a pipe) so a chatty Node can never block on stderr.
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [self._node, str(self._dir / "validate.js")],
            cwd=self._dir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        try:
            hello = self._read_line()
        except R4ValidatorUnavailable:
            self.close()
            raise
        if not hello.get("ready"):
            self.close()
            raise R4ValidatorUnavailable(f"validator did not start: {hello.get('error')}; try `make deps`")
        return self

    def close(self) -> None:
        """Ends the Node process (closing stdin lets it exit by itself)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.stdin:
                    proc.stdin.close()
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> R4Validator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- API -----------------------------------------------------------------------------------------

    def issues(self, resource: Resource) -> list[Issue]:
        """All findings of the three checks, warnings included (tests use this to see *which* check fired)."""
        payload = _as_json(resource)
        found = [
            Issue(i["check"], i["severity"], i.get("expression", ""), i.get("message", ""))
            for i in self._node_issues(payload)
        ]
        return found + roundtrip_issues(payload)

    def errors(self, resource: Resource) -> list[str]:
        """Error-level problems as ``"[check] path: message"``; an empty list means valid R4."""
        return [str(i) for i in self.issues(resource) if i.is_error]

    def assert_valid(self, resource: Resource) -> None:
        """Raises AssertionError listing every problem, so one failing test shows all of them."""
        problems = self.errors(resource)
        if problems:
            kind = _as_json(resource).get("resourceType", "resource")
            raise AssertionError(f"{kind} is not valid FHIR R4:\n  " + "\n  ".join(problems))

    # -- Node protocol -------------------------------------------------------------------------------

    def _node_issues(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        with self._lock:
            self.start()
            assert self._proc is not None and self._proc.stdin is not None
            self._next_id += 1
            request_id = self._next_id
            try:
                line = json.dumps({"id": request_id, "resource": payload}, default=float)
                self._proc.stdin.write(line + "\n")
                self._proc.stdin.flush()
            except BrokenPipeError:
                raise RuntimeError(f"FHIR validator process died: {self._stderr_text()}") from None
            reply = self._read_line()
        if reply.get("id") != request_id or "error" in reply:
            raise RuntimeError(f"FHIR validator failed on request {request_id}: {reply.get('error', reply)}")
        return reply["issues"]

    def _read_line(self) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise R4ValidatorUnavailable(f"FHIR validator process exited: {self._stderr_text()}")
        return json.loads(line)

    def _stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()[-4000:]


def _as_json(resource: Resource) -> dict[str, Any]:
    """Accepts a dict, JSON text/bytes (e.g. a response body) or an R4B model instance."""
    if isinstance(resource, FHIRAbstractModel):
        # The serialisation the services must use (FHIR-REFERENCE.md §3).
        return json.loads(resource.model_dump_json(exclude_comments=True))
    if isinstance(resource, bytes | bytearray | str):
        return json.loads(resource)
    if isinstance(resource, dict):
        return resource
    raise TypeError(f"cannot validate a {type(resource).__name__}")


# -- check (c): R4B round trip -------------------------------------------------------------------------


def roundtrip_issues(payload: dict[str, Any]) -> list[Issue]:
    """Parses with the R4B model and compares its JSON output with the input.

    A validation error means the value breaks an R4 primitive rule the R4B models enforce; a difference
    means the models would drop, add or change data on the way out.
    """
    kind = payload.get("resourceType")
    try:
        model_class = get_fhir_model_class(str(kind))
    except ValueError:
        return [Issue("roundtrip", "error", "", f"no fhir.resources.R4B model for resourceType {kind!r}")]
    try:
        model = model_class.model_validate(payload)
    except ValidationError as exc:
        return [
            Issue("roundtrip", "error", _loc_path(str(kind), err["loc"]), err["msg"])
            for err in exc.errors(include_url=False)
        ]
    except Exception as exc:  # noqa: BLE001 - any parser crash is a finding, not a test error
        return [Issue("roundtrip", "error", str(kind), f"R4B model raised {type(exc).__name__}: {exc}")]
    dumped = model.model_dump_json(exclude_comments=True)
    before = _canonical(payload)
    after = json.loads(dumped, parse_float=Decimal)
    difference = next(_differences(before, after, str(kind)), None)
    return [] if difference is None else [Issue("roundtrip", "error", *difference)]


def _canonical(value: Any) -> Any:
    """Copies JSON data with floats as Decimal, the form the R4B output is parsed into."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return Decimal(repr(value)) if isinstance(value, float) else value


def _loc_path(root: str, loc: tuple[Any, ...]) -> str:
    path = root
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


_DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
_TIME = re.compile(r"^\d\d:\d\d:\d\d(\.\d+)?$")


def _same_scalar(a: Any, b: Any) -> bool:
    """Equality up to JSON number spelling (2.50 == 2.5) and R4B's temporal formatting.

    The R4B models rewrite ``+00:00`` as ``Z`` and print fractional seconds with six digits; those
    spell the same dateTime/instant/time, so they are not reported.
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | Decimal) and isinstance(b, int | Decimal):
        return Decimal(a) == Decimal(b)
    if isinstance(a, str) and isinstance(b, str) and a != b:
        if _DATETIME.match(a) and _DATETIME.match(b):
            x, y = (datetime.fromisoformat(s.replace("Z", "+00:00")) for s in (a, b))
            return (x.replace(tzinfo=None), x.utcoffset()) == (y.replace(tzinfo=None), y.utcoffset())
        if _TIME.match(a) and _TIME.match(b):
            return time.fromisoformat(a) == time.fromisoformat(b)
    return type(a) is type(b) and a == b


def _differences(before: Any, after: Any, path: str) -> Iterator[tuple[str, str]]:
    """Yields (path, message) for each difference, depth first, so the first one is the earliest."""
    if isinstance(before, dict) and isinstance(after, dict):
        for key in before:
            if key not in after:
                yield f"{path}.{key}", f"dropped by the R4B round trip (input {_short(before[key])})"
            else:
                yield from _differences(before[key], after[key], f"{path}.{key}")
        for key in after:
            if key not in before:
                yield f"{path}.{key}", f"added by the R4B round trip ({_short(after[key])})"
    elif isinstance(before, list) and isinstance(after, list):
        for i, (x, y) in enumerate(zip(before, after, strict=False)):
            yield from _differences(x, y, f"{path}[{i}]")
        if len(before) != len(after):
            yield path, f"R4B round trip changed the list length from {len(before)} to {len(after)}"
    elif not _same_scalar(before, after):
        yield path, f"R4B round trip changed {_short(before)} to {_short(after)}"


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."
