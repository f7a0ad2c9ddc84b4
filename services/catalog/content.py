"""Loading the catalog's content files into the store, idempotently.

`services/catalog/content/<Type>/<id>.json` is the source of truth for the shipped
knowledge. At start-up each file is compared with the stored current version (meta
aside): unchanged files write nothing, a changed file writes exactly one new version,
and a new file is created under its own id. Invalid content stops the start-up: a
catalog that silently skips a protocol would plan wrong treatments.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlmodel import Session

from services.fhir.outcome import FhirError, NotFound
from services.fhir.store import ResourceStore
from services.fhir.validation import r4_issues

log = logging.getLogger("cicatrix.catalog.content")


@dataclass
class LoadReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0


class ContentError(RuntimeError):
    """A content file is not a valid R4 resource of the catalog."""


def content_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.json") if p.is_file())


def _comparable(resource: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    body = {k: v for k, v in resource.items() if k != "meta"}
    if meta:
        body["meta"] = meta
    return body


def load_content(session: Session, store: ResourceStore, directory: Path, types: tuple[str, ...],
                 before_write: Any = None) -> LoadReport:
    """Create or update every content file; commits once at the end (all or nothing)."""
    report = LoadReport()
    for path in content_files(directory):
        try:
            resource = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise ContentError(f"{path}: not valid JSON ({exc})") from None
        resource_type, resource_id = resource.get("resourceType"), resource.get("id")
        if resource_type not in types or not resource_id:
            raise ContentError(f"{path}: a catalog resource type with an id is required")
        issues = r4_issues(resource)
        if issues:
            raise ContentError(f"{path}: " + "; ".join(i.diagnostics for i in issues[:5]))
        try:
            current = store.read(session, resource_type, resource_id)
        except NotFound:
            current = None
        except FhirError:  # deleted: the content brings it back
            current = None
        if current is not None and _comparable(current.parsed()) == _comparable(resource):
            report.unchanged += 1
            continue
        if before_write:
            before_write(session, resource, resource_id)
        _, created = store.update(session, resource_type, resource_id, resource, if_match=None,
                                  create_if_missing=True)
        if created:
            report.created += 1
        else:
            report.updated += 1
    session.commit()
    log.info("content loaded", extra={"files_created": report.created, "files_updated": report.updated,
                                      "files_unchanged": report.unchanged})
    return report
