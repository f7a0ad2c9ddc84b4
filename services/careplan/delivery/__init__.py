"""Reliable delivery of CarePlans to the EHR: nothing lost, nothing duplicated (see README.md here).

    outbox.py      the outbox table and the plan hook that queues each CarePlan version
    claims.py      claiming due rows (SKIP LOCKED, leases, fencing) and recording results
    dispatcher.py  the loop: claim, deliver concurrently, retry with backoff, graceful stop
    sending.py     one attempt: search-before-resend, create / If-Match update, read-back
    payloads.py    what the EHR receives: CarePlan, Provenance, DocumentReference, Bundle
    capabilities.py  the EHR's CapabilityStatement as one typed model
    request_plan.py  the requests this EHR gets (shape, conditional headers, searches, Provenance, fallbacks)
    ehr_client.py  HTTP to the EHR; errors.py its error tree; auth.py bearer and SMART Backend Services
    retry.py       backoff with jitter, Retry-After; readback.py dropped-element check
    metrics.py     Prometheus; embedded.py wiring into the app; standalone.py `cicatrix dispatch`
"""
