"""The requests this EHR gets, planned once from its CapabilityStatement (capabilities.py).

A `RequestPlan` says, for one EHR, how a plan version travels: the shape, whether a
create may carry If-None-Exist, which search finds what an earlier, ambiguous attempt
left behind (search-before-resend), whether a Provenance is sent and how it is found
again, how a later version of a document is written, and whether US Core is followed.
Each choice takes the first option the EHR declares, in this documented order:

    shape          transaction (system `transaction` + CarePlan create)
                   -> individual (CarePlan create) -> document (DocumentReference create)
                   A shape is taken only if its resource can be found again (below); CAREPLAN_EHR_DELIVERY
                   other than `auto` restricts the choice to that one shape.
    duplicates     If-None-Exist / ifNoneExist `identifier=` (conditionalCreate + `identifier` search)
                   -> search by `identifier` before a resend
                   -> search by `patient` (DocumentReference: and `type`), matched on our identifier here
                   -> none: the shape is not used (a resend could duplicate the plan)
    Provenance     ifNoneExist `_tag=` (Provenance create, conditionalCreate, `_tag` search)
                   -> search by `_tag` before a resend
                   -> search by `target`, matched on our delivery tag here
                   -> in a transaction: none needed (found CarePlan means its Provenance was written with it)
                   -> no Provenance: who and what from travel in the resource's own fields
                      (CarePlan.author / supportingInfo; DocumentReference.author / context.related)
    later version  CarePlan: update with If-Match (CarePlan update + read), else "cannot deliver"
                   document: update with If-Match (DocumentReference update + read)
                   -> a new document that `relatesTo` (replaces) the previous one
    US Core        CarePlan / DocumentReference profile of US Core in the statement: send conforming resources
    formats        FHIR JSON must be among the declared formats (when any are declared)
    If-Match       on updates where the type's `versioning` is `versioned-update`
    read-back      a GET after a write only where the type declares `read`

No vendor is named anywhere: an EHR that declares the same things gets the same requests.
When no option is left, the plan says which capability is missing, in plain words
(`cannot_create` / `cannot_update`); the Task and /readyz repeat it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from services.careplan.delivery.capabilities import EhrCapabilities, read_capabilities
from services.careplan.delivery.ehr_client import EhrClient
from services.careplan.delivery.payloads import US_CORE_CAREPLAN, US_CORE_DOCUMENT

log = logging.getLogger("cicatrix.careplan.delivery")

TRANSACTION, INDIVIDUAL, DOCUMENT = "transaction", "individual", "document"
SHAPES = (TRANSACTION, INDIVIDUAL, DOCUMENT)
UPDATE, REPLACE = "update", "replace"
JSON_FORMATS = frozenset({"json", "application/fhir+json", "application/json"})


class CannotDeliver(Exception):
    """No request this EHR declares can carry the plan safely; the message names the missing capability."""


@dataclass(frozen=True)
class Lookup:
    """How search-before-resend finds a resource an earlier attempt may have written."""

    resource_type: str
    params: tuple[str, ...]
    """`identifier` (exact) or `patient`[, `type`] (the results are matched on our identifier here)."""

    @property
    def exact(self) -> bool:
        return self.params == ("identifier",)


@dataclass(frozen=True)
class ProvenancePlan:
    if_none_exist: bool
    """ifNoneExist / If-None-Exist `_tag=<delivery>` on the create."""
    lookup: str | None
    """`_tag` or `target` (matched on our tag here) to find it before a resend; None in a transaction."""


@dataclass(frozen=True)
class RequestPlan:
    shape: str | None
    conditional_create: bool = False
    """If-None-Exist / ifNoneExist `identifier=` on the CarePlan or DocumentReference create."""
    lookup: Lookup | None = None
    provenance: ProvenancePlan | None = None
    document_versions: str | None = None
    """update | replace: how a later plan version reaches an EHR that holds the plan as a document."""
    careplan_update: bool = False
    """A later version of a plan held as a CarePlan can be sent (update with If-Match, read after a 412)."""
    if_match: frozenset[str] = frozenset()
    """Types whose updates carry If-Match (versioning `versioned-update`)."""
    readable: frozenset[str] = frozenset()
    """Types the EHR declares read for (the read-back GET is only sent for these)."""
    us_core_careplan: bool = False
    us_core_document: bool = False
    cannot_create: str | None = None
    """Why a first version cannot be delivered (plain words naming the missing capability); None: it can."""
    fallbacks: tuple[str, ...] = ()
    """The fallbacks taken, in plain words (logged once, shown by $ehr-capabilities)."""
    token_url: str | None = None

    @property
    def cannot_update(self) -> str | None:
        """Why a later version of a plan the EHR holds as a CarePlan cannot be delivered; None: it can."""
        if self.careplan_update:
            return None
        return ("the EHR does not declare CarePlan update and read, so a later version of a plan it holds "
                "as a CarePlan cannot be sent")

    def requests(self) -> list[tuple[str, str]]:
        """(when, request) pairs in the order they are sent; for people (log, $ehr-capabilities)."""
        if self.shape is None:
            return []
        main = "DocumentReference" if self.shape == DOCUMENT else "CarePlan"
        key = "<plan version's document id>" if self.shape == DOCUMENT else "<plan identifier>"
        header = f" If-None-Exist: identifier={key}" if self.conditional_create else ""
        steps: list[tuple[str, str]] = []
        if self.lookup is not None:
            when = "after an ambiguous attempt" if self.conditional_create else "before every create"
            matched = "" if self.lookup.exact else " (matched on our identifier here)"
            query = "&".join(f"{param}=<…>" for param in self.lookup.params)
            steps.append((when, f"GET {main}?{query}{matched}"))
        prov = self.provenance
        if prov is not None and prov.lookup is not None:
            when = "after an ambiguous attempt" if prov.if_none_exist else "before a Provenance create"
            suffix = " (matched on our delivery tag here)" if prov.lookup == "target" else ""
            steps.append((when, f"GET Provenance?{prov.lookup}=<…>{suffix}"))
        prov_header = " If-None-Exist: _tag=<delivery>" if prov is not None and prov.if_none_exist else ""
        careplan_match = " If-Match" if "CarePlan" in self.if_match else ""
        document_match = " If-Match" if "DocumentReference" in self.if_match else ""
        replacing = "POST DocumentReference (relatesTo replaces the previous one)"
        if self.shape == TRANSACTION:
            entries = f"POST CarePlan{header}" + (f", POST Provenance{prov_header}" if prov else "")
            steps.append(("first version", f"POST / (transaction: {entries})"))
            later = (f"POST / (transaction: PUT CarePlan/<id>{careplan_match}"
                     + (f", POST Provenance{prov_header})" if prov else ")"))
        else:
            steps.append(("first version", f"POST {main}{header}"))
            later = f"PUT CarePlan/<id>{careplan_match}"
            if self.shape == DOCUMENT:
                later = (f"PUT DocumentReference/<id>{document_match} when the practitioner is known, else {replacing}"
                         if self.document_versions == UPDATE else replacing)
        if self.shape != DOCUMENT and self.cannot_update:
            later = f"none: {self.cannot_update}"
        steps.append(("later version", later))
        if not later.startswith(("none", replacing)):
            steps.append(("after an ambiguous update, or a 412", f"GET {main}/<id> (is this version there already?)"))
        if prov is not None and self.shape != TRANSACTION:
            steps.append(("after each write", f"POST Provenance{prov_header}"))
        return steps


def plan_requests(capabilities: EhrCapabilities, configured: str = "auto") -> RequestPlan:
    """The request plan for an EHR with `capabilities` (see the module docstring for the order)."""
    fallbacks: list[str] = []
    reasons: list[str] = []
    careplan_update = capabilities.can("CarePlan", "update") and capabilities.can("CarePlan", "read")
    formats = {f.split(";")[0].strip() for f in capabilities.formats}
    if formats and not formats & JSON_FORMATS:  # everything here is sent as FHIR JSON
        reasons.append("no JSON format is declared (only " + ", ".join(capabilities.formats) + ")")
    for shape in (SHAPES if configured == "auto" else (configured,)) if not reasons else ():
        refused = _refusal(capabilities, shape)
        if refused is not None:
            reasons.append(refused)
            continue
        main = "DocumentReference" if shape == DOCUMENT else "CarePlan"
        conditional = capabilities.conditional_create(main, "identifier")
        lookup = _lookup(capabilities, main)
        if lookup is None and not conditional:
            reasons.append(f"the {shape} shape: the EHR declares neither conditional create nor a search "
                           f"(`identifier` or `patient`) on {main}, so a resend could duplicate the plan")
            continue
        if reasons:
            fallbacks.append(f"shape {shape}, because " + "; ".join(reasons))
        if lookup is not None and not lookup.exact:
            fallbacks.append(f"{main} found by {' and '.join(lookup.params)} search and matched on our identifier "
                             f"here, because the EHR declares no `identifier` search on {main}")
        elif not conditional:
            fallbacks.append(f"{main} searched by identifier before each create, because the EHR declares no "
                             f"conditional create on {main}")
        provenance = _provenance(capabilities, shape, fallbacks)
        versions = None
        if shape == DOCUMENT:
            versions = UPDATE if (capabilities.can(main, "update") and capabilities.can(main, "read")) else REPLACE
            if versions == REPLACE:
                fallbacks.append("a later plan version is a new DocumentReference that replaces the previous one, "
                                 "because the EHR declares no DocumentReference update")
        return RequestPlan(
            shape=shape, conditional_create=conditional, lookup=lookup, provenance=provenance,
            document_versions=versions,
            careplan_update=careplan_update,
            if_match=frozenset(kind for kind in ("CarePlan", "DocumentReference")
                               if capabilities.resource(kind).versioned_update),
            readable=frozenset(kind for kind in ("CarePlan", "DocumentReference") if capabilities.can(kind, "read")),
            us_core_careplan=capabilities.profiled(US_CORE_CAREPLAN),
            us_core_document=capabilities.profiled(US_CORE_DOCUMENT),
            fallbacks=tuple(fallbacks), token_url=capabilities.token_url)
    return RequestPlan(shape=None, careplan_update=careplan_update,
                       cannot_create="the EHR cannot receive care plans: " + "; ".join(reasons),
                       token_url=capabilities.token_url)


def _refusal(capabilities: EhrCapabilities, shape: str) -> str | None:
    """Why `shape` is not declared at all; None when it is."""
    if shape == TRANSACTION:
        if "transaction" not in capabilities.system:
            return "no `transaction` interaction is declared"
        if not capabilities.can("CarePlan", "create"):
            return "no CarePlan create is declared"
    if shape == INDIVIDUAL and not capabilities.can("CarePlan", "create"):
        return "no CarePlan create is declared"
    if shape == DOCUMENT and not capabilities.can("DocumentReference", "create"):
        return "no DocumentReference create is declared"
    return None


def _lookup(capabilities: EhrCapabilities, resource_type: str) -> Lookup | None:
    if capabilities.searches(resource_type, "identifier"):
        return Lookup(resource_type, ("identifier",))
    if capabilities.searches(resource_type, "patient"):
        narrower = resource_type == "DocumentReference" and capabilities.searches(resource_type, "patient", "type")
        return Lookup(resource_type, ("patient", "type") if narrower else ("patient",))
    return None


def _provenance(capabilities: EhrCapabilities, shape: str, fallbacks: list[str]) -> ProvenancePlan | None:
    if not capabilities.can("Provenance", "create"):
        fallbacks.append("no Provenance, because the EHR declares no Provenance create: the author, the assessment "
                         "and the protocol travel in the resource's own fields")
        return None
    if capabilities.conditional_create("Provenance", "_tag"):
        return ProvenancePlan(if_none_exist=True, lookup="_tag")
    if capabilities.searches("Provenance", "_tag"):
        fallbacks.append("Provenance searched by _tag before each create, because the EHR declares no conditional "
                         "create on Provenance")
        return ProvenancePlan(if_none_exist=False, lookup="_tag")
    if capabilities.searches("Provenance", "target"):
        fallbacks.append("Provenance found by target and matched on our delivery tag here, because the EHR "
                         "declares no `_tag` search on Provenance")
        return ProvenancePlan(if_none_exist=False, lookup="target")
    if shape == TRANSACTION:
        fallbacks.append("Provenance sent in the transaction without a search key: it is written together with "
                         "the plan or not at all")
        return ProvenancePlan(if_none_exist=False, lookup=None)
    fallbacks.append("no Provenance, because the EHR declares no Provenance search (`_tag` or `target`) to keep "
                     "it to one copy: the author, the assessment and the protocol travel in the resource's own "
                     "fields")
    return None


@dataclass
class CurrentPlan:
    plan: RequestPlan
    capabilities: EhrCapabilities
    read_at: float = field(default_factory=time.time)
    """Wall-clock time the statement was read (epoch seconds)."""


class PlanSelector:
    """The request plan for the EHR's current CapabilityStatement: read at start, cached, refreshed.

    The statement is read when first needed and again every CAREPLAN_EHR_CAPABILITY_REFRESH_SECONDS (or
    after a 405 suggests it changed), so an EHR upgrade changes the requests without a restart. The plan is
    logged whenever it changes, without any patient data. Failing to read the statement fails the attempt
    like any transport error (retried, and visible on the Task): nothing is sent on assumptions."""

    def __init__(self, configured: str, *, refresh_seconds: float) -> None:
        self.configured = configured
        self.refresh_seconds = refresh_seconds
        self.latest: CurrentPlan | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Any) -> PlanSelector:
        return cls(settings.EHR_DELIVERY, refresh_seconds=settings.EHR_CAPABILITY_REFRESH_SECONDS)

    async def current(self, client: EhrClient) -> RequestPlan:
        async with self._lock:
            stale = time.monotonic() - self._read_at > self.refresh_seconds
            if self.latest is None or stale:
                capabilities = read_capabilities(await client.capabilities())
                plan = plan_requests(capabilities, self.configured)
                if self.latest is None or self.latest.plan != plan:
                    log.info("EHR request plan", extra=plan_log(plan, self.configured))
                self.latest = CurrentPlan(plan, capabilities)
                self._read_at = time.monotonic()
            return self.latest.plan

    def forget(self) -> None:
        """Read the statement again before the next delivery."""
        self._read_at = 0.0


def plan_log(plan: RequestPlan, configured: str) -> dict[str, Any]:
    """The plan as structured log fields (capabilities only: no patient data)."""
    return {"shape": plan.shape, "configured": configured, "requests": [f"{w}: {r}" for w, r in plan.requests()],
            "fallbacks": list(plan.fallbacks), "cannot_create": plan.cannot_create,
            "cannot_update": plan.cannot_update, "us_core": [name for name, on in (
                ("CarePlan", plan.us_core_careplan), ("DocumentReference", plan.us_core_document)) if on]}
