"""Content negotiation for FHIR JSON.

R4 http.html: `_format` values json, application/json and application/fhir+json mean
JSON and override `Accept`; a generic `application/json` or `*/*` in Accept gets FHIR
JSON; anything this server cannot produce is 406. XML and Turtle are not produced.
"""

from __future__ import annotations

from services.fhir.outcome import NotAcceptable

JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json", "application/json+fhir"})
ACCEPTABLE = frozenset({"*/*", "application/*", "application/json", "application/fhir+json",
                        "application/json+fhir"})


def check_acceptable(accept: str | None, format_param: str | None) -> None:
    """Raise 406 unless the client accepts JSON (by `_format` or by `Accept`)."""
    if format_param is not None:
        if format_param.split(";", 1)[0].strip().lower() not in JSON_FORMATS:
            raise NotAcceptable(f"_format '{format_param}' is not supported; this server produces JSON only",
                                expression="_format")
        return
    if not accept:
        return
    for part in accept.split(","):
        kind, *params = (piece.strip().lower() for piece in part.split(";"))
        if kind in ACCEPTABLE and _quality(params) > 0:
            return
    raise NotAcceptable(f"Cannot produce any of '{accept}'; this server produces application/fhir+json")


def _quality(params: list[str]) -> float:
    """The `q` weight of one Accept entry (1 when absent or unreadable)."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip() == "q":
            try:
                return float(value)
            except ValueError:
                return 1.0
    return 1.0
