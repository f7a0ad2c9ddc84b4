"""CDS Hooks 2.0 in the care-plan service: the plan and its safety screening inside the EHR's own workflow.

`discovery` (the services and their prefetch templates), `hooks` (reading a call),
`trust` (the EHR's JWT), `prefetch` (given or fetched from `fhirServer`),
`patient` (EHR data as the screening rules read it), `plans` (the EHR's copies of our plans), `scar_plan` and
`order_safety` (the two services), `cards`, `feedback`, and `router` (the routes).
"""
