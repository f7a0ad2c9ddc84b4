"""The care-plan service: scar assessment in, scheduled and screened FHIR CarePlan out, delivered to the EHR."""
