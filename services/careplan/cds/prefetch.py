"""Prefetch: the FHIR data a CDS service asks the EHR for, taken from the call or fetched from `fhirServer`.

Prefetch is optional in CDS Hooks 2.0. For each template of the service this
module takes the EHR's prefetched answer when the key is present (`null` means
"no data", which is an answer). A key that is absent is fetched from `fhirServer`
with the `fhirAuthorization` bearer token when the call brought both; all missing
keys are fetched at once, each with CDS_FHIR_TIMEOUT_SECONDS and at most
CDS_FHIR_MAX_BYTES read, without following redirects. A key that can be had
neither way is reported as not checked, and the services say so on their cards.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from starlette.concurrency import run_in_threadpool

from services.careplan.cds.hooks import HookCall
from services.fhir.outcome import BadRequest
from services.fhir.validation import r4_issues

log = logging.getLogger("cicatrix.cds")

TOKEN = re.compile(r"\{\{\s*context\.([A-Za-z][A-Za-z0-9]*)\s*\}\}")


@dataclass(frozen=True)
class Prefetched:
    """What each prefetch key brought: resources by key (possibly empty), and the keys nobody could answer."""

    resources: dict[str, list[dict[str, Any]]]
    unchecked: tuple[str, ...]

    def of(self, key: str) -> list[dict[str, Any]]:
        return self.resources.get(key, [])

    def checked(self, key: str) -> bool:
        return key not in self.unchecked


def render(template: str, context: Mapping[str, Any]) -> str:
    """The template with its `{{context.x}}` tokens replaced (only root-level string context fields exist here)."""
    def value(match: re.Match[str]) -> str:
        found = context.get(match.group(1))
        if not isinstance(found, str):
            raise BadRequest(f"The context has no {match.group(1)} for the prefetch template", code="required",
                             expression=f"context.{match.group(1)}")
        return found
    return TOKEN.sub(value, template)


class PrefetchResolver:
    def __init__(self, *, timeout: float, max_bytes: int, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.max_bytes = max_bytes
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout), follow_redirects=False, transport=transport,
                                       limits=httpx.Limits(max_connections=50, max_keepalive_connections=10))

    async def close(self) -> None:
        await self._http.aclose()

    async def resolve(self, call: HookCall, templates: Mapping[str, str]) -> Prefetched:
        resources: dict[str, list[dict[str, Any]]] = {}
        missing: dict[str, str] = {}
        for key, template in templates.items():
            if key in call.prefetch:
                resources[key] = _resources(call.prefetch[key], key)
            else:
                missing[key] = render(template, call.context)
        unchecked: list[str] = []
        if missing and call.fhir_server and call.access_token:
            fetched = await asyncio.gather(*(self._fetch(call.fhir_server, call.access_token, query)
                                             for query in missing.values()))
            for key, value in zip(missing, fetched, strict=True):
                if value is None:
                    unchecked.append(key)
                else:
                    resources[key] = _resources(value, key)
        else:
            unchecked.extend(missing)
        patient = call.patient_reference
        return Prefetched({k: [r for r in v if _about(r, patient)] for k, v in resources.items()}, tuple(unchecked))

    async def _fetch(self, base: str, token: str, query: str) -> Any:
        """One prefetch query against the EHR; None when it cannot be answered (logged without the query)."""
        url = f"{base.rstrip('/')}/{query}"
        headers = {"Accept": "application/fhir+json", "Authorization": f"Bearer {token}"}
        try:
            async with self._http.stream("GET", url, headers=headers) as response:
                if response.status_code != 200:
                    log.warning("prefetch query refused", extra={"status": response.status_code})
                    return None
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self.max_bytes:
                        log.warning("prefetch answer too large", extra={"limit": self.max_bytes})
                        return None
            value = orjson.loads(body)
        except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
            log.warning("prefetch query failed", extra={"error": type(exc).__name__})
            return None
        if isinstance(value, dict) and not await run_in_threadpool(r4_issues, value):
            return value
        log.warning("prefetch answer is not valid R4")
        return None


def _resources(value: Any, key: str) -> list[dict[str, Any]]:
    """A prefetch answer as a list of resources: null, one resource, or a searchset Bundle's resources."""
    if value is None:
        return []
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        raise BadRequest(f"prefetch.{key} must be a FHIR resource, a Bundle or null", expression=f"prefetch.{key}")
    if value["resourceType"] == "Bundle":
        entries = value.get("entry")
        if not isinstance(entries, list):
            entries = []
        return [e["resource"] for e in entries if isinstance(e, dict) and isinstance(e.get("resource"), dict)
                and (e.get("search") or {}).get("mode", "match") == "match"]
    if value["resourceType"] == "OperationOutcome":
        return []
    return [value]


def _about(resource: dict[str, Any], patient: str) -> bool:
    """Whether a prefetched resource is about the patient in context (data about anyone else is ignored)."""
    for field in ("subject", "patient"):
        reference = resource.get(field)
        if isinstance(reference, dict):
            found = reference.get("reference")
            return isinstance(found, str) and (found == patient or found.endswith("/" + patient))
    return True
