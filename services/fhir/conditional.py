"""Conditional requests (RFC 9110 section 13, R4 http.html#concurrency): every precondition rule of Cicatrix.

- `If-None-Match` on GET/HEAD: `*` or a list of entity-tags, compared weakly (`W/"3"` and `"3"` name the
  same version); a listed tag naming the current representation answers 304. Items that are not
  entity-tags name nothing. In a batch/transaction entry (`request.ifNoneMatch`) each item must be a
  version ETag: an unreadable one is a 400 there, as for `ifMatch`.
- `If-Modified-Since` on GET/HEAD: 304 when the resource has not changed since that date (to the
  second, the precision of Last-Modified). It is ignored when If-None-Match is present, and when the
  date is not an HTTP date.
- `If-Match` on writes: the version the client last saw (`W/"3"`); a present but unreadable header is a
  400, a stale version is a 412 (decided by the store, which holds the current version).
- `If-None-Exist` on create (`request.ifNoneExist`): a search on the type, given as `[Type]?query` or
  `query`; the caller searches and creates only when nothing matches.

Callers hand in header values; nothing here reads a request, so the ASGI read path and the FastAPI
handlers share these functions.
"""

from __future__ import annotations

import re
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qsl

from services.fhir.outcome import BadRequest

_VERSION_ETAG = re.compile(r'^\s*(?:W/)?"?(\d+)"?\s*$')
_LIST_ITEM = re.compile(r'\s*(?:(?:W/)?("[^"]*")|([^,]*?))\s*(?:,|\Z)')


def version_from_etag(header: str | None, *, name: str = "If-Match") -> int | None:
    """'W/"3"' -> 3; a header that is present but unreadable is a 400."""
    if header is None:
        return None
    match = _VERSION_ETAG.match(header)
    if not match:
        raise BadRequest(f"{name} must be a version ETag such as W/\"3\", not '{header}'", expression=name)
    return int(match.group(1))


def required_version(header: str | None, message: str) -> int:
    """The If-Match version a write cannot go without: 400 (`required`) when absent."""
    version = version_from_etag(header)
    if version is None:
        raise BadRequest(message, expression="If-Match", code="required")
    return version


def _items(header: str) -> list[str]:
    """The items of an If-None-Match list, each an opaque tag with its quotes (`"3"`), `*`, or what a
    client sent that is not an entity-tag. Commas inside quotes belong to the tag (RFC 9110 etagc)."""
    items: list[str] = []
    position = 0
    while position < len(header):
        match = _LIST_ITEM.match(header, position)
        if match is None or match.end() == position:
            break
        quoted, other = match.group(1), match.group(2)
        if quoted is not None or other:
            items.append(quoted if quoted is not None else other)
        position = match.end()
    return items


def _opaque(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def none_match(header: str | None, current: str) -> bool:
    """Whether If-None-Match `header` names the representation whose ETag is `current` (or is `*`)."""
    if not header:
        return False
    if header == current:  # what clients send: the ETag as they received it
        return True
    opaque = _opaque(current)
    return any(item == "*" or item == opaque for item in _items(header))


def modified_since(header: str | None, last_modified: datetime) -> bool:
    """Whether the resource changed after the If-Modified-Since date (True when there is no readable date)."""
    if not header:
        return True
    try:
        since = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return True
    if since.tzinfo is None or last_modified.tzinfo is None:
        return True
    return last_modified.replace(microsecond=0) > since


def not_modified(if_none_match: str | None, if_modified_since: str | None, current: str,
                 last_modified: datetime | None = None) -> bool:
    """Whether a GET/HEAD answers 304: If-None-Match decides when present, else If-Modified-Since."""
    if if_none_match:
        return none_match(if_none_match, current)
    return last_modified is not None and if_modified_since is not None \
        and not modified_since(if_modified_since, last_modified)


def entry_none_match(value: str, version_id: int, *, name: str) -> bool:
    """Whether a batch/transaction entry's `ifNoneMatch` names `version_id`; each listed item must be `*`
    or a version ETag (400 naming `name` otherwise)."""
    return any(item.strip() == "*" or version_from_etag(item, name=name) == version_id
               for item in value.split(","))


def none_exist_query(condition: str) -> list[tuple[str, str]]:
    """The search parameters of an If-None-Exist condition (`Type?identifier=x` or `identifier=x`)."""
    return parse_qsl(condition.split("?", 1)[-1], keep_blank_values=True)
