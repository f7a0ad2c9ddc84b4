"""OperationOutcome errors.

Every failure a client can see is an OperationOutcome with the right HTTP status.
Errors are raised deep (storage, search parsing, intake checks) as a `FhirError`
and rendered once, at the edge, by the handlers in `services.fhir.errors`.
pydantic's validation errors become issues here too (`validation_issues`), so that
checking a resource needs no web framework.

    FhirError                     400 unless a subclass says otherwise
    ├── BadRequest                400  invalid / structure / value
    ├── Unauthorized              401  login
    ├── Forbidden                 403  forbidden
    ├── NotFound                  404  not-found
    ├── MethodNotAllowed          405  not-supported
    ├── NotAcceptable             406  not-supported
    ├── Conflict                  409  conflict
    ├── Gone                      410  deleted
    ├── PreconditionFailed        412  conflict
    ├── PayloadTooLarge           413  too-costly
    ├── UnsupportedMediaType      415  not-supported
    ├── Unprocessable             422  business-rule / invariant / required
    ├── InternalError             500  exception
    └── ServiceUnavailable        503  transient
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue; `expression` is a FHIRPath into the offending input."""

    code: str
    diagnostics: str
    severity: str = "error"
    expression: Sequence[str] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        issue: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue


def operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    """Build the OperationOutcome resource for `issues` (at least one is required by R4)."""
    rendered = [issue.as_dict() for issue in issues]
    if not rendered:
        rendered = [Issue(code="informational", severity="information", diagnostics="All OK").as_dict()]
    return {"resourceType": "OperationOutcome", "issue": rendered}


class FhirError(Exception):
    """A failure answered to the client as an OperationOutcome."""

    status: int = 400
    code: str = "invalid"

    def __init__(
        self,
        diagnostics: str,
        *,
        expression: Sequence[str] | str | None = None,
        code: str | None = None,
        issues: Sequence[Issue] | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(diagnostics)
        if status is not None:
            self.status = status
        if isinstance(expression, str):
            expression = (expression,)
        self.issues: tuple[Issue, ...] = tuple(issues) if issues else (
            Issue(code=code or self.code, diagnostics=diagnostics, expression=tuple(expression or ())),
        )
        self.headers = headers or {}

    @property
    def diagnostics(self) -> str:
        return self.issues[0].diagnostics

    def operation_outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


class BadRequest(FhirError):
    status, code = 400, "invalid"


class Unauthorized(FhirError):
    status, code = 401, "login"


class Forbidden(FhirError):
    status, code = 403, "forbidden"


class NotFound(FhirError):
    status, code = 404, "not-found"


class MethodNotAllowed(FhirError):
    status, code = 405, "not-supported"


class NotAcceptable(FhirError):
    status, code = 406, "not-supported"


class Conflict(FhirError):
    status, code = 409, "conflict"


class Gone(FhirError):
    status, code = 410, "deleted"


class PreconditionFailed(FhirError):
    status, code = 412, "conflict"


class PayloadTooLarge(FhirError):
    status, code = 413, "too-costly"


class UnsupportedMediaType(FhirError):
    status, code = 415, "not-supported"


class Unprocessable(FhirError):
    status, code = 422, "business-rule"


class InternalError(FhirError):
    status, code = 500, "exception"


class ServiceUnavailable(FhirError):
    status, code = 503, "transient"


# pydantic error types -> FHIR issue-type codes
_ISSUE_CODES = {
    "missing": "required",
    "json_invalid": "structure",
    "json_type": "structure",
    "extra_forbidden": "structure",
    "string_too_long": "too-long",
    "too_long": "too-long",
}


def _expression(location: Sequence[Any]) -> str:
    """pydantic's loc tuple as a FHIRPath-like expression: ('query', '_count') -> '_count'."""
    parts = [str(p) for p in location if p not in ("body", "query", "path", "header")]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text or "body"


def validation_issues(errors: Sequence[Mapping[str, Any]], *, prefix: str = "") -> list[Issue]:
    """pydantic errors as OperationOutcome issues, one per error."""
    issues = []
    for error in errors:
        where = _expression(error.get("loc", ()))
        if prefix:
            where = f"{prefix}.{where}" if where != "body" else prefix
        issues.append(Issue(code=_ISSUE_CODES.get(error.get("type", ""), "invalid"),
                            diagnostics=f"{where}: {error.get('msg', 'invalid value')}", expression=(where,)))
    return issues
