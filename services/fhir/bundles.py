"""Bundles assembled from stored bytes.

A searchset or history Bundle is written by splicing each stored resource's JSON
bytes into the envelope, so serving a page costs no parse and no re-validation of
what was validated on write. Only `_summary` and `_elements` (which must subset a
resource) parse it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import cache
from typing import Any
from urllib.parse import urlencode

import orjson
from fhir.resources.R4B import get_fhir_model_class

from services.fhir.outcome import BadRequest, Issue, operation_outcome
from services.fhir.store import SearchPage, StoredResource, instant, utcnow

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "subsetted"}
ALWAYS_KEPT = ("resourceType", "id", "meta")


def _top_level(resource_type: str, wanted: Callable[[Any, dict[str, Any]], bool]) -> set[str]:
    """Aliases of the R4B model's top-level fields for which `wanted(field, metadata)` holds."""
    names = set()
    for field in get_fhir_model_class(resource_type).model_fields.values():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if field.alias and wanted(field, extra):
            names.add(field.alias)
    return names


@cache
def summary_elements(resource_type: str) -> frozenset[str]:
    """Top-level elements marked `isSummary` in the R4 definition (with their `_` primitive extensions)."""
    names = _top_level(resource_type, lambda _, extra: bool(extra.get("summary_element_property")))
    return frozenset(names | {"_" + name for name in names})


@cache
def mandatory_elements(resource_type: str) -> frozenset[str]:
    """Top-level elements with a minimum cardinality of 1: `_elements` keeps them (R4 search.html)."""
    return frozenset(_top_level(resource_type,
                                lambda field, extra: bool(extra.get("element_required") or field.is_required())))


def subset(content: bytes, *, summary: str | None, elements: Sequence[str]) -> bytes:
    """Apply `_summary` / `_elements` to one stored resource and tag it SUBSETTED."""
    if not elements and summary in (None, "false"):
        return content
    resource: dict[str, Any] = orjson.loads(content)
    resource_type = resource["resourceType"]
    if elements:
        keep = set(elements) | {"_" + e for e in elements} | mandatory_elements(resource_type)
    elif summary == "true":
        keep = set(summary_elements(resource_type))
    elif summary == "text":
        keep = {"text"} | mandatory_elements(resource_type)
    else:  # data: everything but the narrative
        keep = set(resource) - {"text"}
    reduced = {k: v for k, v in resource.items() if k in keep or k in ALWAYS_KEPT}
    meta = dict(reduced.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    reduced["meta"] = meta
    return orjson.dumps(reduced)


def _entry(base: str, stored: StoredResource, mode: str, *, summary: str | None, elements: Sequence[str]) -> bytes:
    assert stored.content is not None
    head = orjson.dumps(f"{base}/{stored.resource_type}/{stored.id}")
    body = subset(stored.content, summary=summary, elements=elements)
    return b'{"fullUrl":' + head + b',"resource":' + body + b',"search":{"mode":"' + mode.encode() + b'"}}'


def paging_url(base: str, resource_type: str, params: Iterable[tuple[str, str]], cursor: str | None = None) -> str:
    pairs = list(params)
    if cursor:
        pairs.append(("_cursor", cursor))
    query = urlencode(pairs)
    return f"{base}/{resource_type}" + (f"?{query}" if query else "")


def searchset(base: str, page: SearchPage, *, resource_type: str, params: Sequence[tuple[str, str]],
              cursor: str | None, summary: str | None, elements: Sequence[str],
              warnings: Sequence[Issue] = ()) -> bytes:
    """The searchset Bundle bytes for one page, with self / first / next / previous links."""
    links = [{"relation": "self", "url": paging_url(base, resource_type, params, cursor)},
             {"relation": "first", "url": paging_url(base, resource_type, params)}]
    if page.next_cursor:
        links.append({"relation": "next", "url": paging_url(base, resource_type, params, page.next_cursor)})
    if page.previous_cursor:
        links.append({"relation": "previous", "url": paging_url(base, resource_type, params, page.previous_cursor)})
    # No meta.lastUpdated: the same page over the same data is the same bytes, so it can carry an ETag.
    envelope: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if page.total is not None:
        envelope["total"] = page.total
    envelope["link"] = links
    entries = [_entry(base, m, "match", summary=summary, elements=elements) for m in page.matches]
    entries += [_entry(base, m, "include", summary=None, elements=()) for m in page.included]
    if warnings:
        outcome = orjson.dumps(operation_outcome(warnings))
        entries.append(b'{"resource":' + outcome + b',"search":{"mode":"outcome"}}')
    head = orjson.dumps(envelope)
    if not entries:
        return head
    return head[:-1] + b',"entry":[' + b",".join(entries) + b"]}"


def history(base: str, versions: Sequence[StoredResource], *, self_url: str) -> bytes:
    """A history Bundle (newest first): each entry with its request and response, deletions without a resource."""
    envelope = {"resourceType": "Bundle", "type": "history", "meta": {"lastUpdated": instant(utcnow())},
                "total": len(versions), "link": [{"relation": "self", "url": self_url}]}
    entries = []
    for v in versions:
        url = f"{v.resource_type}/{v.id}"
        request = {"method": v.method if v.method in ("POST", "PUT", "DELETE") else "PUT",
                   "url": v.resource_type if v.method == "POST" else url}
        response = {"status": "204" if v.deleted else ("201" if v.version_id == 1 else "200"),
                    "etag": f'W/"{v.version_id}"', "lastModified": instant(v.last_updated)}
        parts = b'{"fullUrl":' + orjson.dumps(f"{base}/{url}")
        if v.content is not None and not v.deleted:
            parts += b',"resource":' + v.content
        parts += b',"request":' + orjson.dumps(request) + b',"response":' + orjson.dumps(response) + b"}"
        entries.append(parts)
    head = orjson.dumps(envelope)
    if not entries:
        return head
    return head[:-1] + b',"entry":[' + b",".join(entries) + b"]}"


def rendered_searchset(base: str, resource_type: str, resources: Sequence[dict[str, Any]], *, total: int,
                       params: Sequence[tuple[str, str]], warnings: Sequence[Issue] = ()) -> dict[str, Any]:
    """A searchset Bundle of resources rendered from their own tables (delivery Tasks, Subscriptions), not stored
    bytes; one page, `params` the search parameters understood, `warnings` those ignored."""
    entries: list[dict[str, Any]] = [{"fullUrl": f"{base}/{resource_type}/{resource['id']}", "resource": resource,
                                      "search": {"mode": "match"}} for resource in resources]
    if warnings:
        entries.append({"resource": operation_outcome(warnings), "search": {"mode": "outcome"}})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": total,
                              "link": [{"relation": "self", "url": f"{base}/{resource_type}"
                                        + (f"?{urlencode(params)}" if params else "")}]}
    if entries:
        bundle["entry"] = entries
    return bundle


def ignored_parameter(name: str) -> Issue:
    """The warning for a search parameter a rendered search does not understand."""
    return Issue(code="not-supported", severity="warning", diagnostics=f"Unknown search parameter ignored: {name}",
                 expression=(name,))


def page_size(value: str, maximum: int) -> int:
    """A `_count` value for a rendered search, capped at `maximum`; 400 when it is not a number."""
    if not value.isdigit():
        raise BadRequest("_count must be a non-negative integer", expression="_count")
    return min(int(value), maximum)
