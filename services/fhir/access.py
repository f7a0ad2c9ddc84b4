"""Who may do what: the one place that turns a FHIR request and a token into allow or deny.

A service describes its rules as data (`AccessPolicy`): which operations need
which permission, which resource types are patient data (in a patient's
compartment), and whether anonymous reads are allowed. `decide` applies them:

- read, vread and history-instance need `<Type>.r`; search and history-type
  `<Type>.s`; create `.c`; update and patch `.u`; delete `.d` (SMART v2 letters,
  v1 forms understood, see `services.fhir.scopes`);
- an operation needs what the service's interaction table says of it
  (services.fhir.interaction_table); an operation it does not list is refused;
- a batch/transaction needs, for every entry, what that entry's request needs;
- `system/` and `user/` scopes reach every resource of the type (this server has no
  per-user permissions of its own to narrow `user/` further); a `patient/` scope on
  a patient-data type reaches only the token's `patient` through reads and searches
  (the compartment is enforced by `services.fhir.compartment`), and never writes or
  runs operations there, since those name their patient in a body not yet read; on
  other types (the catalog's knowledge) a `patient/` scope reads like any other.

The result is an `Access` the route hooks and the audit trail read from the request
scope; handlers never look at tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.fhir.outcome import BadRequest, Forbidden
from services.fhir.routes import FhirRequest, parse_entry_url
from services.fhir.scopes import Grants, required_scope

ACCESS_SCOPE_KEY = "cicatrix.access"
"""Where the middleware leaves the request's `Access` in the ASGI scope."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the verified token's subject and client, or nobody (auth off, anonymous read)."""

    subject: str | None
    client_id: str | None
    issuer: str | None
    grants: Grants
    patient: str | None = None
    """The token's `patient` launch context (a Patient id)."""
    fhir_user: str | None = None
    authenticated: bool = True

    @classmethod
    def anonymous(cls) -> Principal:
        return cls(None, None, None, Grants(()), authenticated=False)

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Principal:
        scope_claim = claims.get("scope", claims.get("scp"))
        client = claims.get("client_id") or claims.get("azp") or claims.get("cid")
        patient = claims.get("patient")
        if isinstance(patient, str) and patient.startswith("Patient/"):
            patient = patient[len("Patient/"):]
        fhir_user = claims.get("fhirUser")
        return cls(subject=_text(claims.get("sub")), client_id=_text(client), issuer=_text(claims.get("iss")),
                   grants=Grants.parse(scope_claim if isinstance(scope_claim, str | list) else None),
                   patient=_text(patient), fhir_user=_text(fhir_user))


def _text(value: Any) -> str | None:
    return value[:256] if isinstance(value, str) and value else None


@dataclass(frozen=True)
class Access:
    """What a request may reach: everything its route needs, or only one patient's compartment."""

    principal: Principal
    patient: str | None = None
    """Set when only `patient/` scopes cover the request: reads are limited to this Patient id."""
    enforced: bool = True
    """False when the service runs without access control (AUTH_MODE=off): everything is allowed."""

    def allows(self, resource_type: str, letter: str) -> bool:
        """Whether the token also grants `letter` on every `resource_type` beyond what its route needed.

        For answers that depend on more than the route's own scope: `$generate` (CarePlan.c) returns an already
        stored plan only to a caller that may read plans. `patient/` scopes do not count: what they reach is one
        compartment, decided by `services.fhir.compartment`."""
        if not self.enforced:
            return True
        return bool(self.principal.grants.contexts(resource_type, letter) & {"system", "user"})


@dataclass(frozen=True)
class Need:
    resource_type: str
    letter: str
    interaction: str

    def scope(self) -> str:
        return required_scope(self.resource_type, self.letter)


@dataclass(frozen=True)
class AccessPolicy:
    operations: Mapping[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    """(resource type, or `*` for a route that takes any type; operation name) -> (type whose permission it
    needs, `*` for its own; letter): `InteractionTable.operation_rules`. (type, name) wins over (`*`, name)."""
    patient_data: frozenset[str] = frozenset()
    """Types in a patient's compartment: `patient/` scopes reach only the token's patient there."""
    patient_searchable: frozenset[str] = frozenset()
    """Patient-data types whose search can be narrowed to one patient (the others refuse `patient/` searches)."""
    anonymous_read: bool = False
    """Reads and searches without a token (never of patient data)."""
    patient_managed: frozenset[str] = frozenset()
    """Patient-data types a `patient/` scope may also create, delete and run operations on; their handlers keep
    each such resource to the token's patient (a Subscription to that patient's events, say)."""

    def needs(self, request: FhirRequest, body: Any = None) -> list[Need]:
        """What `request` needs; a batch/transaction's needs come from its parsed `body`."""
        if request.interaction == "batch":
            return self._bundle_needs(body)
        if request.interaction == "operation":
            return [self._operation_need(request)]
        if request.letter is None or request.resource_type is None:
            raise Forbidden(f"No access rule covers the {request.interaction} interaction here")
        return [Need(request.resource_type, request.letter, request.interaction)]

    def _operation_need(self, request: FhirRequest) -> Need:
        on, name = request.resource_type or "*", request.operation or ""
        rule = next((self.operations[key] for key in ((on, name), ("*", name)) if key in self.operations), None)
        if rule is None:
            raise Forbidden(f"No access rule covers the ${request.operation} operation")
        rule_type, letter = rule
        return Need(on if rule_type == "*" else rule_type, letter, "operation")

    def _bundle_needs(self, body: Any) -> list[Need]:
        if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
            return []  # the handler refuses it; nothing in it can run
        needs: list[Need] = []
        for index, entry in enumerate(body.get("entry") or []):
            request = entry.get("request") if isinstance(entry, dict) else None
            method, url = (request.get("method"), request.get("url")) if isinstance(request, dict) else (None, None)
            if not isinstance(method, str) or not isinstance(url, str):
                raise BadRequest(f"Bundle.entry[{index}].request needs a method and a url",
                                 expression=f"Bundle.entry[{index}].request", code="required")
            parsed = _entry_request(method, url)
            if parsed is None or parsed.interaction in ("batch", "operation"):
                raise Forbidden(f"No access rule covers Bundle.entry[{index}]: {method} {url[:100]}")
            needs.extend(self.needs(parsed))
        return needs

    def decide(self, principal: Principal, needs: Iterable[Need]) -> Access:
        """Allow (with or without a patient limit) or raise Forbidden naming the scope that is missing."""
        limited = False
        for need in needs:
            contexts = principal.grants.contexts(need.resource_type, need.letter)
            if contexts & {"system", "user"}:
                continue
            if "patient" in contexts:
                if need.resource_type not in self.patient_data:
                    if need.letter in "rs":
                        continue
                    raise _forbidden(need, "a patient/ scope only reads knowledge resources")
                self._check_patient_limited(principal, need)
                limited = True
                continue
            raise _forbidden(need, "the access token does not grant it")
        return Access(principal, principal.patient if limited else None)

    def _check_patient_limited(self, principal: Principal, need: Need) -> None:
        if principal.patient is None:
            raise _forbidden(need, "a patient/ scope needs the token's patient context")
        if need.letter == "r" and need.interaction != "operation":
            return
        if need.resource_type in self.patient_managed:
            return
        if need.letter == "s" and need.interaction == "search-type" and need.resource_type in self.patient_searchable:
            return
        raise _forbidden(need, f"a patient/ scope does not allow this {need.interaction} on {need.resource_type}")

    def anonymous_allowed(self, needs: Iterable[Need]) -> bool:
        """Anonymous callers may only read and search (operations that read included) outside patient data."""
        return self.anonymous_read and all(
            need.resource_type not in self.patient_data and need.letter in ("r", "s") for need in needs)


def _entry_request(method: str, url: str) -> FhirRequest | None:
    try:
        return parse_entry_url(method, url)
    except ValueError:
        return None


def _forbidden(need: Need, why: str) -> Forbidden:
    scope = need.scope()
    return Forbidden(f"{need.interaction} on {need.resource_type} needs the scope {scope} "
                     f"(or its user/ or patient/ form): {why}",
                     headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'})
