"""Who may use the catalog (README.md#security).

The catalog holds treatment knowledge, not patient data: reads need `<Type>.r`,
searches `<Type>.s` (or nothing with CATALOG_ALLOW_ANONYMOUS_READ=true), writes
`.c`/`.u`/`.d`, and a batch or transaction what each of its entries needs. The
operations need what the interaction table says: the terminology operations read
(`ValueSet.r`, `CodeSystem.r`); `$validate` is for writers (`<Type>.c`).
"""

from __future__ import annotations

from services.catalog.settings import CatalogSettings
from services.fhir.access import AccessPolicy
from services.fhir.interaction_table import InteractionTable


def access_policy(settings: CatalogSettings, table: InteractionTable) -> AccessPolicy:
    return AccessPolicy(operations=table.operation_rules(), anonymous_read=settings.ALLOW_ANONYMOUS_READ)
