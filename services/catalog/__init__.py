"""The catalog service: scar-treatment knowledge published as FHIR R4 resources."""
