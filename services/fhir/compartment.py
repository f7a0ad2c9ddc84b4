"""The patient compartment: which patient a resource belongs to, and keeping `patient/` tokens inside it.

A resource belongs to the patients its `patient` search parameter names (the same
definition that indexes it, so searching and checking cannot disagree), and to
those its `subject`, `patient`, `for` or `beneficiary` element references (for
resources served without the store, such as the delivery Tasks).

When `services.fhir.access` limited a request to one patient, `narrow_search`
adds `patient=Patient/<id>` to every search of a patient-data type (it is ANDed
with whatever the client asked) and `check_read` refuses any resource read that is
outside the compartment; `check_resource` is the same check for responses built
outside the generic interactions. A resource is inside a patient's compartment only
when that patient is the only one it names: an AuditEvent (or any resource) naming a
second patient is outside both patients' compartments.

Every resource a check looks at is noted in the request scope (`touched`), so that
the audit trail records it with its patient even when the answer carries no body (a
304) or is a refusal (403).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request

from services.fhir.access import ACCESS_SCOPE_KEY, Access
from services.fhir.outcome import Forbidden
from services.fhir.searchparams import SearchParamDef, extract
from services.fhir.store import StoredResource

PATIENT_ELEMENTS = ("subject", "patient", "for", "beneficiary")
TOUCHED_SCOPE_KEY = "cicatrix.touched"
"""A list the audit trail puts in the request scope; the compartment checks append what they looked at."""

Checked = StoredResource | Mapping[str, Any]


def touched(scope: Mapping[str, Any]) -> list[Checked]:
    """The resources the request's checks looked at (an empty list when no audit trail is listening)."""
    found = scope.get(TOUCHED_SCOPE_KEY)
    return found if isinstance(found, list) else []


def resource_of(item: Checked) -> Mapping[str, Any]:
    return item.resource if isinstance(item, StoredResource) else item


def current_access(request: Request) -> Access | None:
    """The request's access decision (None when no access middleware ran, e.g. in unit tests)."""
    access = request.scope.get(ACCESS_SCOPE_KEY)
    return access if isinstance(access, Access) else None


class PatientCompartment:
    def __init__(self, types: frozenset[str], search_params: Mapping[str, Mapping[str, SearchParamDef]],
                 patients_of: Mapping[str, Callable[[Mapping[str, Any]], set[str]]] | None = None) -> None:
        self.types = types
        self.search_params = search_params
        self.patients_of = dict(patients_of or {})
        """Per type, how to find its patients where no search parameter or subject-like element says."""

    @property
    def searchable(self) -> frozenset[str]:
        """Patient-data types whose searches can be narrowed (they index a `patient` parameter)."""
        return frozenset(t for t in self.types if "patient" in self.search_params.get(t, {}))

    def patients(self, resource: Mapping[str, Any]) -> set[str]:
        """`Patient/<id>` references the resource belongs to."""
        found: set[str] = set()
        extra = self.patients_of.get(str(resource.get("resourceType")))
        if extra is not None:
            found.update(extra(resource))
        defn = self.search_params.get(str(resource.get("resourceType")), {}).get("patient")
        if defn is not None:
            found.update(v.value for v in extract(defn, resource) if v.value)
        for name in PATIENT_ELEMENTS:
            element = resource.get(name)
            if isinstance(element, dict) and isinstance(element.get("reference"), str):
                found.add(element["reference"])
        return {_relative(ref) for ref in found if "Patient/" in ref}

    def narrow_search(self, request: Request, resource_type: str,
                      pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """search_hook: a patient-limited search only finds that patient's resources."""
        access = current_access(request)
        if access is None or access.patient is None or resource_type not in self.types:
            return pairs
        if resource_type not in self.searchable:
            raise Forbidden(f"{resource_type} cannot be searched with a patient/ scope")
        return [*pairs, ("patient", f"Patient/{access.patient}")]

    def check_read(self, request: Request, stored: Checked) -> None:
        """read_hook: a patient-limited read only returns that patient's resources; the audit trail hears of it.

        Also for resources rendered outside the store (the delivery Tasks): call it before answering 304."""
        touched(request.scope).append(stored)
        access = current_access(request)
        if access is not None and access.patient is not None:
            resource_type = stored.resource_type if isinstance(stored, StoredResource) else stored.get("resourceType")
            if resource_type in self.types:
                self.check_resource(access, resource_of(stored))

    def check_resource(self, access: Access, resource: Mapping[str, Any]) -> None:
        if access.patient is None or resource.get("resourceType") not in self.types:
            return
        if self.patients(resource) != {f"Patient/{access.patient}"}:
            raise Forbidden(f"{resource.get('resourceType')}/{resource.get('id')} is outside the patient "
                            "compartment of this access token")

    def hooks(self) -> dict[str, Any]:
        """Keyword arguments for `ResourceInteractions`."""
        return {"search_hook": self.narrow_search, "read_hook": self.check_read}


def _relative(reference: str) -> str:
    """'https://ehr/fhir/Patient/1' -> 'Patient/1' (versions dropped)."""
    tail = reference[reference.rindex("Patient/"):]
    return tail.split("/_history/")[0]
