"""What can go wrong when talking to the EHR, as one small tree.

    EhrError                      anything the EHR client raises
    ├── EhrTransportError         no usable HTTP answer: refused, reset, dropped, timed out, TLS
    │                             `maybe_applied`: the request may have reached the EHR (ambiguous)
    └── EhrRejected               an HTTP answer >= 400: `status`, the EHR's `outcome` (OperationOutcome
                                  or None), `retry_after` (seconds, from Retry-After)

httpx's own exceptions are translated into these at exactly one place
(`EhrClient._send`), so the dispatcher decides retry / give up / search-first on
this tree alone and never on a library's exception types.

The classification that follows from the tree (`retryable`, `ambiguous`) lives here
too, next to the types it reads, so it is written once.
"""

from __future__ import annotations

from typing import Any

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Connection errors, timeouts, 408, 429 and these 5xx are retried; every other 4xx is permanent."""


class EhrError(Exception):
    """Base of every EHR client error; `request` names the interaction (method and path, never a body)."""

    def __init__(self, message: str, *, request: str | None = None) -> None:
        super().__init__(message)
        self.request = request

    @property
    def retryable(self) -> bool:
        return False

    @property
    def ambiguous(self) -> bool:
        """True when the EHR may have applied the request although no success was seen."""
        return False


class EhrTransportError(EhrError):
    """No HTTP answer came back."""

    def __init__(self, message: str, *, request: str | None = None, maybe_applied: bool = True) -> None:
        super().__init__(message, request=request)
        self.maybe_applied = maybe_applied

    @property
    def retryable(self) -> bool:
        return True

    @property
    def ambiguous(self) -> bool:
        return self.maybe_applied


class EhrRejected(EhrError):
    """The EHR answered with an error status."""

    def __init__(self, status: int, outcome: dict[str, Any] | None, *, request: str | None = None,
                 retry_after: float | None = None, message: str | None = None) -> None:
        super().__init__(message or f"the EHR answered {status}", request=request)
        self.status = status
        self.outcome = outcome
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE_STATUSES

    @property
    def ambiguous(self) -> bool:
        # A 5xx may come after the EHR applied the write (a proxy timing out, a crash before answering);
        # 408 and 429 say the request was not processed.
        return self.status >= 500

    def diagnostics(self) -> str:
        """The EHR's own words (first issue), for the Task's statusReason; never the request body."""
        for issue in (self.outcome or {}).get("issue", []):
            text = issue.get("diagnostics") or (issue.get("details") or {}).get("text")
            if text:
                return str(text)[:500]
        return str(self)
