"""Bulk loading for the growth figures: 100,000 catalog resources, 1,000,000 care plans, straight into PostgreSQL.

Writing that many resources through the API would take hours, so rows go in with COPY: the current
version (`*_resource`), its first version (`*_resource_version`) and its search index rows, exactly as the
store writes them. Index rows come from the store's own extraction (`services.fhir.searchparams.extract`)
run once per template resource; each filler resource is its template with a number in place of `__N__`
(ids, urls, names, identifiers, patients), so index values are substituted the same way. The indexes are
dropped during the COPY and created again afterwards (what `pg_restore` does), then the tables analysed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from sqlalchemy.engine import make_url

from services.fhir.searchparams import SearchParamDef, extract
from tests.bench import stack

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
MARK = "__N__"


def migrate(service: str, url: str) -> None:
    """`cicatrix migrate SERVICE` against `url`, as an operator runs it."""
    subprocess.run([sys.executable, "-m", "services.cli", "migrate", service], cwd=stack.ROOT, check=True,
                   capture_output=True, env={**stack.os.environ, f"{service.upper()}_DATABASE_URL": url})


def connect(url: str) -> psycopg.Connection[Any]:
    parsed = make_url(url)
    options = parsed.query.get("options")
    return psycopg.connect(host=parsed.host, port=parsed.port or 5432, user=parsed.username,
                           password=parsed.password, dbname=parsed.database,
                           options=options if isinstance(options, str) else None)


def _index_template(resource: dict[str, Any], params: dict[str, SearchParamDef]) -> list[tuple[Any, ...]]:
    rows = []
    for name, defn in params.items():
        for value in extract(defn, resource):
            rows.append((name, value.system, value.value, value.norm, value.low, value.high))
    return rows


def load(url: str, prefix: str, templates: list[dict[str, Any]], params: dict[str, dict[str, SearchParamDef]],
         count: int, start: int = 0, versions: bool = True) -> None:
    """Add `count` resources (template n % len(templates), numbered from `start`) to the `prefix` tables.

    The templates and their index rows go to temporary tables; PostgreSQL itself then writes the rows
    (`generate_series` and `replace`), so a million resources take a minute rather than a Python loop's hours.
    `versions=False` leaves out the history rows (reads and searches never touch them)."""
    with connect(url) as connection, connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE bench_template (k int, resource_type text, body text, url text, "
                       "version text) ON COMMIT DROP")
        cursor.execute("CREATE TEMP TABLE bench_template_index (k int, resource_type text, param text, "
                       "system text, value text, norm text, low timestamptz, high timestamptz) ON COMMIT DROP")
        for k, template in enumerate(templates):
            resource = dict(template)
            resource["meta"] = {"versionId": "1",
                                "lastUpdated": NOW.isoformat(timespec="milliseconds").replace("+00:00", "Z")}
            head = {key: resource[key] for key in ("resourceType", "id", "meta")}
            body = orjson.dumps(head | {key: v for key, v in resource.items() if key not in head}).decode()
            cursor.execute("INSERT INTO bench_template VALUES (%s, %s, %s, %s, %s)",
                           (k, resource["resourceType"], body, resource.get("url"), resource.get("version")))
            for row in _index_template(resource, params.get(resource["resourceType"], {})):
                cursor.execute("INSERT INTO bench_template_index VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                               (k, resource["resourceType"], *row))
        indexes = _drop_indexes(connection, prefix)
        numbered = (f"FROM generate_series({start}, {start + count - 1}) AS n "
                    f"JOIN bench_template t ON t.k = mod(n, {len(templates)})")
        fill = "replace(replace({}, '__N__', n::text), '__n__', n::text)"
        content = f"convert_to({fill.format('t.body')}, 'UTF8')"
        cursor.execute(f"INSERT INTO {prefix}_resource ({', '.join(_COLUMNS['resource'])}) "
                       f"SELECT t.resource_type, 'bulk-' || n, 1, %s, false, {fill.format('t.url')}, t.version, "
                       f"{content} {numbered}", (NOW,))
        if versions:
            cursor.execute(f"INSERT INTO {prefix}_resource_version ({', '.join(_COLUMNS['resource_version'])}) "
                           f"SELECT t.resource_type, 'bulk-' || n, 1, %s, false, 'POST', {content} {numbered}",
                           (NOW,))
        cursor.execute(f"INSERT INTO {prefix}_search_index ({', '.join(_COLUMNS['search_index'])}) "
                       f"SELECT i.resource_type, 'bulk-' || n, i.param, i.system, {fill.format('i.value')}, "
                       f"{fill.format('i.norm')}, i.low, i.high "
                       f"FROM generate_series({start}, {start + count - 1}) AS n "
                       f"JOIN bench_template_index i ON i.k = mod(n, {len(templates)})")
        for statement in indexes:
            cursor.execute(statement)
        for table in ("resource", "resource_version", "search_index"):
            cursor.execute(f"ANALYZE {prefix}_{table}")
        connection.commit()


_COLUMNS = {
    "resource": ("resource_type", "id", "version_id", "last_updated", "deleted", "url", "version", "content"),
    "resource_version": ("resource_type", "id", "version_id", "last_updated", "deleted", "method", "content"),
    "search_index": ("resource_type", "resource_id", "param", "system", "value", "norm", "low", "high"),
}


def _drop_indexes(connection: psycopg.Connection[Any], prefix: str) -> list[str]:
    """Drop the secondary indexes of the prefix's tables; returns the statements that create them again."""
    with connection.cursor() as cursor:
        tables = [f"{prefix}_{t}" for t in ("resource", "resource_version", "search_index")]
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                       "AND tablename = ANY(%s) AND indexname NOT IN (SELECT conname FROM pg_constraint)", (tables,))
        found = cursor.fetchall()
        for name, _ in found:
            cursor.execute(f'DROP INDEX "{name}"')
    return [definition for _, definition in found]


# ----------------------------------------------------------------------------------------- templates


def catalog_templates() -> list[dict[str, Any]]:
    """Knowledge resources in the shapes the catalog holds (status active, canonical urls, names, codes)."""
    base = "https://fhir.bench.example"
    return [
        {"resourceType": "ActivityDefinition", "id": f"bulk-{MARK}", "url": f"{base}/ActivityDefinition/a{MARK}",
         "version": "1.0.0", "name": f"BenchActivity{MARK}", "title": f"Bench activity {MARK}", "status": "active",
         "description": f"A generated procedure number {MARK} for growth measurements.", "kind": "ServiceRequest",
         "code": {"coding": [{"system": f"{base}/CodeSystem/procedure", "code": f"p{MARK}"}]},
         "timingTiming": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk", "count": 6}}},
        {"resourceType": "Medication", "id": f"bulk-{MARK}", "status": "active",
         "code": {"coding": [{"system": f"{base}/CodeSystem/medication", "code": f"m{MARK}"}],
                  "text": f"Bench preparation {MARK}"}},
        {"resourceType": "MedicationKnowledge", "id": f"bulk-{MARK}", "status": "active",
         "code": {"coding": [{"system": f"{base}/CodeSystem/medication", "code": f"m{MARK}"}]},
         "associatedMedication": [{"reference": f"Medication/bulk-{MARK}"}]},
        {"resourceType": "PlanDefinition", "id": f"bulk-{MARK}", "url": f"{base}/PlanDefinition/p{MARK}",
         "version": "1.0.0", "name": f"BenchProtocol{MARK}", "title": f"Bench protocol {MARK}", "status": "active",
         "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/plan-definition-type",
                              "code": "clinical-protocol"}]},
         "action": [{"title": "Procedure", "definitionCanonical": f"{base}/ActivityDefinition/a{MARK}|1.0.0"}]},
    ]


def careplan_templates() -> list[dict[str, Any]]:
    """CarePlans as `$generate` stores them, with the activity list cut short (the indexed elements are whole)."""
    plans = []
    for path in sorted((stack.ROOT / "contracts" / "fhir" / "examples").glob("*.careplan.json")):
        plan = json.loads(path.read_text())
        plan["id"] = f"bulk-{MARK}"
        plan["identifier"] = [{"system": "https://fhir.cicatrix.org/careplan", "value": f"bench-{MARK}"}]
        plan["subject"] = {"reference": f"Patient/bulk-{MARK}"}
        plan["activity"] = plan.get("activity", [])[:1]
        for element in ("text", "note", "goal", "description"):
            plan.pop(element, None)
        plan.pop("contained", None)
        plan.pop("supportingInfo", None)
        plans.append(plan)
    return plans
