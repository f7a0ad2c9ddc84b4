"""SMART on FHIR scopes: what an access token's `scope` claim grants.

SMART App Launch 2 (scopes-and-launch-context.html) writes a resource scope as
`<context>/<Type>.<permissions>`: context `patient`, `user` or `system`; `Type` a
resource type or `*`; permissions an ordered, non-empty subset of `cruds`
(create, read, update, delete, search). Version 1 forms are understood too:
`.read` is `rs`, `.write` is `cud`, `.*` is `cruds`.

What this module does not do: it grants nothing for scopes it cannot read
(`openid`, `launch/patient`, misspelt letters like `.sr`) and nothing for v2
granular scopes with a query (`patient/Observation.rs?category=...`), because
honouring half of such a restriction would grant more than was asked for.
Deciding what a request needs is `services.fhir.access`; this module only reads
grants.

>>> grants = Grants.parse("system/CarePlan.rs patient/Task.read openid")
>>> grants.contexts("CarePlan", "r"), grants.contexts("Task", "s"), grants.contexts("Task", "c")
(frozenset({'system'}), frozenset({'patient'}), frozenset())
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

LETTERS = "cruds"
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]{0,63})\.([a-z*]+)$")


def _permissions(text: str) -> frozenset[str] | None:
    """`rs` -> {r, s}; v1 words mapped; None when the letters are not an ordered subset of `cruds`."""
    if text in _V1:
        return frozenset(_V1[text])
    position = -1
    for letter in text:
        found = LETTERS.find(letter)
        if found <= position:  # unknown letter, repeated or out of order
            return None
        position = found
    return frozenset(text) if text else None


@dataclass(frozen=True)
class Scope:
    context: str
    resource_type: str
    """A resource type, or `*` for every type."""
    permissions: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        """One scope string, or None when it is not a resource scope this server honours."""
        match = _SCOPE.match(text)
        if not match:
            return None
        permissions = _permissions(match.group(3))
        if permissions is None:
            return None
        return cls(match.group(1), match.group(2), permissions)

    def covers(self, resource_type: str, letter: str) -> bool:
        return self.resource_type in ("*", resource_type) and letter in self.permissions


@dataclass(frozen=True)
class Grants:
    """The resource scopes of one token."""

    scopes: tuple[Scope, ...]

    @classmethod
    def parse(cls, scope_claim: str | Iterable[str] | None) -> Grants:
        """From a space-separated `scope` claim (RFC 8693 / 9068) or a list (`scp`)."""
        if scope_claim is None:
            return cls(())
        words = scope_claim.split() if isinstance(scope_claim, str) else [str(w) for w in scope_claim]
        parsed = (Scope.parse(word) for word in words)
        return cls(tuple(scope for scope in parsed if scope is not None))

    def contexts(self, resource_type: str, letter: str) -> frozenset[str]:
        """The contexts (patient / user / system) in which the token may do `letter` on `resource_type`."""
        return frozenset(s.context for s in self.scopes if s.covers(resource_type, letter))


def required_scope(resource_type: str, letter: str) -> str:
    """How to ask for a permission, for error messages and `WWW-Authenticate: ... scope=`."""
    return f"system/{resource_type}.{letter}"
