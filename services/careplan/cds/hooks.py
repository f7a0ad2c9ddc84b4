"""A CDS Hooks 2.0 call as the service reads it (https://cds-hooks.hl7.org/2.0/#calling-a-cds-service).

`read_call` checks the request fields the specification defines — `hook`,
`hookInstance`, `context`, optional `prefetch`, `fhirServer` and
`fhirAuthorization` (which needs `fhirServer`) — and the context fields of the
three hooks served here (`patient-view`, `order-select`, `order-sign`). Anything
else is a 400 OperationOutcome that says which field is wrong.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from services.fhir.outcome import BadRequest, Issue
from services.fhir.validation import r4_issues

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
ORDER_TYPES = ("MedicationRequest", "ServiceRequest")


@dataclass(frozen=True)
class HookCall:
    hook: str
    hook_instance: str
    context: dict[str, Any]
    prefetch: dict[str, Any] = field(default_factory=dict)
    fhir_server: str | None = None
    access_token: str | None = None

    @property
    def patient_id(self) -> str:
        return str(self.context["patientId"])

    @property
    def patient_reference(self) -> str:
        return f"Patient/{self.patient_id}"

    def draft_orders(self) -> list[dict[str, Any]]:
        """The orders to screen: every draft order on `order-sign`, the selected ones on `order-select`."""
        bundle = self.context.get("draftOrders") or {}
        orders = [e["resource"] for e in bundle.get("entry", []) if isinstance(e, dict)
                  and isinstance(e.get("resource"), dict) and e["resource"].get("resourceType") in ORDER_TYPES]
        if self.hook == "order-select":
            selected = set(self.context.get("selections", []))
            orders = [o for o in orders if f"{o['resourceType']}/{o.get('id')}" in selected]
        return orders


def read_call(body: Any, expected_hook: str | tuple[str, ...]) -> HookCall:
    if not isinstance(body, dict):
        raise BadRequest("A CDS Hooks call is a JSON object", expression="$")
    hooks = (expected_hook,) if isinstance(expected_hook, str) else expected_hook
    hook = body.get("hook")
    if hook not in hooks:
        raise BadRequest(f"This service answers the {' and '.join(hooks)} hook, not {str(hook)[:40]!r}",
                         expression="hook", code="not-supported")
    instance = body.get("hookInstance")
    try:
        uuid.UUID(str(instance))
    except ValueError:
        raise BadRequest("hookInstance must be a UUID", expression="hookInstance") from None
    context = body.get("context")
    if not isinstance(context, dict):
        raise BadRequest("context is required and must be an object", expression="context", code="required")
    _check_context(hook, context)
    prefetch = body.get("prefetch", {})
    if not isinstance(prefetch, dict):
        raise BadRequest("prefetch must be an object", expression="prefetch")
    server, token = _fhir_access(body)
    return HookCall(hook=hook, hook_instance=str(instance), context=context, prefetch=prefetch, fhir_server=server,
                    access_token=token)


def check_fhir_content(call: HookCall) -> None:
    """The FHIR resources the call carries (draft orders, prefetch) are valid R4, or the call is a 400 naming every
    problem, located in the call (CPU work: run it in a worker thread)."""
    given = [("context.draftOrders", call.context.get("draftOrders"))]
    given += [(f"prefetch.{key}", value) for key, value in call.prefetch.items()]
    for where, value in given:
        if value is None:
            continue
        if not isinstance(value, dict):
            raise BadRequest(f"{where} must be a FHIR resource, a Bundle or null", expression=where)
        issues = r4_issues(value)
        if issues:
            raise BadRequest(f"{where} is not valid R4: {issues[0].diagnostics}", issues=[
                Issue(code=i.code, diagnostics=i.diagnostics,
                      expression=tuple(where + e.removeprefix(value["resourceType"]) for e in i.expression))
                for i in issues])


def _check_context(hook: str, context: dict[str, Any]) -> None:
    for name in ("userId", "patientId"):
        if not isinstance(context.get(name), str) or not context[name]:
            raise BadRequest(f"context.{name} is required for {hook}", expression=f"context.{name}", code="required")
    if not FHIR_ID.match(context["patientId"]):
        raise BadRequest("context.patientId must be a FHIR id", expression="context.patientId")
    if hook in ("order-select", "order-sign"):
        orders = context.get("draftOrders")
        if not isinstance(orders, dict) or orders.get("resourceType") != "Bundle" \
                or not isinstance(orders.get("entry", []), list):
            raise BadRequest(f"context.draftOrders must be a Bundle for {hook}", expression="context.draftOrders",
                             code="required")
    if hook == "order-select":
        selections = context.get("selections")
        if not isinstance(selections, list) or not selections or not all(isinstance(s, str) for s in selections):
            raise BadRequest("context.selections must list the selected orders (Type/id)",
                             expression="context.selections", code="required")


def _fhir_access(body: dict[str, Any]) -> tuple[str | None, str | None]:
    server = body.get("fhirServer")
    authorization = body.get("fhirAuthorization")
    if server is not None:
        parts = urlsplit(server) if isinstance(server, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise BadRequest("fhirServer must be an http(s) URL", expression="fhirServer")
    if authorization is None:
        return server, None
    if server is None:
        raise BadRequest("fhirAuthorization needs fhirServer", expression="fhirServer", code="required")
    if not isinstance(authorization, dict) or not isinstance(authorization.get("access_token"), str) \
            or str(authorization.get("token_type", "")).lower() != "bearer":
        raise BadRequest("fhirAuthorization must hold a Bearer access_token", expression="fhirAuthorization")
    token = authorization["access_token"]
    if not re.fullmatch(r"[A-Za-z0-9\-._~+/]+=*", token):
        raise BadRequest("fhirAuthorization.access_token is not a bearer token",
                         expression="fhirAuthorization.access_token")
    return server, token
