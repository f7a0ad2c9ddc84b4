"""Reliable delivery of CarePlans to the EHR: nothing lost, nothing duplicated (see the README's delivery section).

    outbox.py      the outbox table and the plan hook that queues each CarePlan version
    claims.py      the outbox's SQL: claiming due rows (SKIP LOCKED, leases, fencing), writing results
    dispatcher.py  the loop over the four steps below: claim, deliver concurrently, graceful stop
    assembly.py    what an attempt needs, read from our database: the plan, what the EHR holds, references
    sending.py     one attempt: search-before-resend, create / If-Match update, read-back
    recording.py   an attempt's result: completed, retry with backoff, failed, superseded, released
    payloads.py    what the EHR receives: CarePlan, Provenance, DocumentReference, Bundle
    capabilities.py  the EHR's CapabilityStatement as one typed model
    request_plan.py  the requests this EHR gets (shape, conditional headers, searches, Provenance, fallbacks)
    ehr_client.py  HTTP to the EHR; errors.py its error tree; auth.py bearer and SMART Backend Services
    retry.py       backoff with jitter, Retry-After; readback.py dropped-element check
    metrics.py     Prometheus; embedded.py wiring into the app; standalone.py `cicatrix dispatch`
"""
