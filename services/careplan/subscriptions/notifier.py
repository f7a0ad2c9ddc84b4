"""The notifier: works off the notification outbox, one subscription's notifications at a time, in order.

It is an outbox relay like the plan dispatcher (`services.careplan.relay`, with the
leased-queue rules of `services.careplan.leases`): claims with SKIP LOCKED on PostgreSQL,
leases so that a killed worker's notifications are sent again by another, several
workers on one database. Per attempt:

    2xx                          sent; a handshake makes the subscription `active`
    connection error, timeout,   retried with backoff and jitter (Retry-After is a floor) until
    408, 429, 5xx                SUBSCRIPTION_MAX_ATTEMPTS / SUBSCRIPTION_MAX_AGE
    3xx (redirects are never     the subscription moves to `error`, with the reason in `$status`;
    followed), other 4xx,        its notifications still queued are dropped (they stay readable
    retries exhausted            through `$events`)

A failing endpoint holds back only its own subscription's notifications: every other
subscription, and plan delivery, has rows and claims of its own.

Delivery is at least once: a worker killed after the endpoint received a notification but
before the result was written sends it again after the lease; the receiver sees the same
event number twice. Heartbeats (backport-heartbeat-period) go to active subscriptions that
were sent nothing for that long; they are not queued (a lost heartbeat is followed by the next).

Requests carry `Content-Type: application/fhir+json` and the subscription's own header
lines: never the EHR's credentials, cookies, proxies or `.netrc` (the client does not read
the environment), and redirects are not followed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, col

from services.careplan.delivery.outbox import Delivery
from services.careplan.delivery.retry import RetryPolicy, parse_retry_after
from services.careplan.leases import OPEN_STATES, PENDING, LeasedQueue
from services.careplan.relay import Relay, Work
from services.careplan.searchparams import SEARCH_PARAMS
from services.careplan.subscriptions.bundles import Event, notification_bundle
from services.careplan.subscriptions.events import NOTIFY_CHANNEL
from services.careplan.subscriptions.tables import (
    ACTIVE,
    DROPPED,
    ERROR,
    FAILED,
    HANDSHAKE,
    NOTIFICATIONS,
    REQUESTED,
    SENT,
    SUBSCRIPTIONS,
    Notification,
    Subscription,
)
from services.careplan.tables import CareplanResource, CareplanResourceVersion, CareplanSearchIndex
from services.careplan.tasks import task_resource
from services.fhir.jsonio import dumps
from services.fhir.outcome import FhirError
from services.fhir.store import ResourceStore, as_utc, utcnow

log = logging.getLogger("cicatrix.careplan.subscriptions")

QUEUE = LeasedQueue(Notification, group="subscription_id", order="seq")
HEARTBEAT = "heartbeat:"
"""Key prefix of a heartbeat in flight (a Subscription row, not a leased notification)."""
"""A subscription's notifications go out one at a time, in event-number order (the handshake, 0, first)."""
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})


def service_base(settings: Any) -> str:
    """The FHIR base notifications refer to (CAREPLAN_BASE_URL; else where this service listens)."""
    return (settings.BASE_URL or f"http://{settings.HOST}:{settings.PORT}/fhir").rstrip("/")


class EndpointError(Exception):
    """A notification attempt that did not get a 2xx."""

    def __init__(self, reason: str, *, status: int | None = None, retryable: bool = True,
                 retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.status, self.retryable, self.retry_after = status, retryable, retry_after


@dataclass
class Job:
    notification: Notification
    subscription: Subscription
    events: list[Event]


class Notifier(Relay):
    channel = NOTIFY_CHANNEL
    name = "notifier"

    def __init__(self, settings: Any, engine: Engine, *, worker: str | None = None,
                 rng: random.Random | None = None, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(engine, worker=worker, batch_size=settings.SUBSCRIPTION_BATCH_SIZE,
                         poll_seconds=settings.SUBSCRIPTION_POLL_SECONDS,
                         grace_seconds=settings.DISPATCHER_SHUTDOWN_GRACE_SECONDS,
                         lease_seconds=settings.SUBSCRIPTION_LEASE_SECONDS)
        self.settings = settings
        self.rng = rng or random.Random()
        self.base = service_base(settings)
        self.policy = RetryPolicy(max_attempts=settings.SUBSCRIPTION_MAX_ATTEMPTS,
                                  max_age=settings.SUBSCRIPTION_MAX_AGE, base=settings.SUBSCRIPTION_BACKOFF_SECONDS,
                                  cap=settings.SUBSCRIPTION_BACKOFF_MAX_SECONDS)
        self.store = ResourceStore(CareplanResource, CareplanResourceVersion, CareplanSearchIndex, SEARCH_PARAMS)
        self.client = client or httpx.AsyncClient(
            follow_redirects=False, trust_env=False,
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),  # keep no receiver's cookies
            headers={"User-Agent": "Cicatrix-careplan-subscriptions"},
            limits=httpx.Limits(max_connections=settings.SUBSCRIPTION_BATCH_SIZE * 2))

    async def close(self) -> None:
        await self.client.aclose()

    # ----------------------------------------------------------------- relay hooks

    def _renew_work(self, keys: list[str]) -> None:
        notifications = [key for key in keys if not key.startswith(HEARTBEAT)]
        QUEUE.renew(self.engine, worker=self.worker, ids=notifications, lease_seconds=self.lease_seconds)

    def _open_count(self) -> int:
        return QUEUE.open_count(self.engine)

    def _next_due(self) -> datetime | None:
        moments = [QUEUE.next_due(self.engine)]
        with Session(self.engine) as session:
            beat = session.scalar(select(func.min(col(Subscription.heartbeat_due_at)))
                                  .where(col(Subscription.status) == ACTIVE, col(Subscription.deleted).is_(False)))
        moments.append(as_utc(beat) if beat is not None else None)
        found = [m for m in moments if m is not None]
        return min(found) if found else None

    def _claim_work(self, limit: int, results: list[object]) -> list[tuple[str, Work]]:
        """Claim due notifications (and heartbeats); each attempt writes its own result, so `results` is empty."""
        if limit <= 0:
            return []
        claimed = QUEUE.claim(self.engine, worker=self.worker, limit=limit,
                              lease_seconds=self.settings.SUBSCRIPTION_LEASE_SECONDS)
        work: list[tuple[str, Work]] = []
        if claimed:
            try:
                jobs = self._jobs(claimed)
            except Exception as exc:  # noqa: BLE001 - each attempt reports it and retries
                jobs = [exc] * len(claimed)
            work += [(row.id, partial(self._process, row, job)) for row, job in zip(claimed, jobs, strict=True)]
        if len(claimed) < limit:
            work += [(f"{HEARTBEAT}{row.id}", partial(self._heartbeat, row))
                     for row in self._claim_heartbeats(limit - len(claimed))]
        return work

    # ----------------------------------------------------------------- reading

    def _jobs(self, claimed: list[Notification]) -> list[Job | Exception]:
        """What each claimed notification needs, read in one session."""
        with Session(self.engine, expire_on_commit=False) as session:
            ids = {row.subscription_id for row in claimed}
            chosen = select(Subscription).where(col(Subscription.id).in_(ids))
            subscriptions = {s.id: s for s in session.scalars(chosen)}
            jobs: list[Job | Exception] = []
            for row in claimed:
                subscription = subscriptions.get(row.subscription_id)
                if subscription is None:
                    jobs.append(LookupError("subscription gone"))
                    continue
                events = [] if row.kind == HANDSHAKE else [self._event(session, row, subscription.content)]
                jobs.append(Job(row, subscription, events))
            return jobs

    def _event(self, session: Session, row: Notification, content: str) -> Event:
        found = Event(row.seq, as_utc(row.occurred), row.focus_type, row.focus_id, row.focus_version, row.interaction)
        if content == "full-resource":
            found.resource = focus_resource(session, self.store, self.settings, found)
        return found

    def _claim_heartbeats(self, limit: int) -> list[Subscription]:
        """Active subscriptions whose heartbeat is due and that have nothing queued; each moved to its next beat."""
        now = utcnow()
        table = SUBSCRIPTIONS
        with Session(self.engine, expire_on_commit=False) as session:
            queued = select(col(Notification.subscription_id)).where(col(Notification.state).in_(OPEN_STATES))
            due = list(session.scalars(
                select(Subscription).where(col(Subscription.status) == ACTIVE, col(Subscription.deleted).is_(False),
                                           col(Subscription.heartbeat_due_at) <= now,
                                           col(Subscription.id).not_in(queued)).limit(limit)))
            mine = []
            for row in due:  # compare-and-set: of several workers, one sends each beat
                taken = session.exec(
                    update(table).where(table.c.id == row.id, table.c.heartbeat_due_at == row.heartbeat_due_at)
                    .values(heartbeat_due_at=now + timedelta(seconds=row.heartbeat_seconds or 0)))
                if taken.rowcount == 1:
                    mine.append(row)
            session.commit()
        return mine

    # ----------------------------------------------------------------- sending

    async def _post(self, subscription: Subscription, bundle: dict[str, Any]) -> None:
        headers = {"Content-Type": "application/fhir+json"}
        for line in subscription.header_lines():
            name, _, value = line.partition(":")
            headers[name.strip()] = value.strip()
        timeout = subscription.timeout_seconds or self.settings.SUBSCRIPTION_TIMEOUT_SECONDS
        try:
            response = await self.client.post(subscription.endpoint, content=dumps(bundle), headers=headers,
                                              timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)))
        except httpx.HTTPError as exc:
            raise EndpointError(f"the endpoint could not be reached ({type(exc).__name__})") from exc
        if 200 <= response.status_code < 300:
            return
        status = response.status_code
        if 300 <= status < 400:
            raise EndpointError(f"the endpoint answered {status} (redirects are not followed)", status=status,
                                retryable=False)
        raise EndpointError(f"the endpoint answered {status}", status=status, retryable=status in RETRYABLE,
                            retry_after=parse_retry_after(response.headers.get("retry-after")))

    async def _process(self, row: Notification, job: Job | Exception) -> None:
        ids = {"notification_id": row.id, "subscription_id": row.subscription_id, "event_number": row.seq,
               "attempt": row.attempts + 1, "worker": self.worker}
        try:
            if isinstance(job, Exception):
                raise job
            if job.subscription.deleted or job.subscription.status not in (ACTIVE, REQUESTED):
                await asyncio.to_thread(QUEUE.finish, self.engine, row.id, row.lease, state=DROPPED,
                                        finished_at=utcnow(), last_error=f"subscription {job.subscription.status}")
                return
            kind = HANDSHAKE if row.kind == HANDSHAKE else "event-notification"
            bundle = notification_bundle(job.subscription, kind, job.events, base=self.base,
                                         content=job.subscription.content)
            await self._post(job.subscription, bundle)
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.to_thread(QUEUE.finish, self.engine, row.id, row.lease, state=PENDING,
                                                   next_attempt_at=utcnow(), ambiguous=True))
            raise
        except Exception as error:  # noqa: BLE001 - an endpoint failure, a bug or a database failure
            if not isinstance(error, EndpointError):
                log.exception("notification attempt crashed", extra=ids)
            await self._failed(row, error, ids)
            return
        await asyncio.to_thread(QUEUE.finish, self.engine, row.id, row.lease, state=SENT, attempts=row.attempts + 1,
                                finished_at=utcnow(), last_error=None, last_status=None,
                                then=partial(_after_sent, row, job.subscription))
        log.info("notification sent", extra=ids)

    async def _failed(self, row: Notification, error: Exception, ids: dict[str, Any]) -> None:
        attempt = row.attempts + 1
        reason = str(error) if isinstance(error, EndpointError) else f"internal error ({type(error).__name__})"
        status = error.status if isinstance(error, EndpointError) else None
        when = None
        if getattr(error, "retryable", True):
            when = self.policy.next_attempt(attempts=attempt, window_start=as_utc(row.window_start), now=utcnow(),
                                            retry_after=getattr(error, "retry_after", None), rng=self.rng)
        if when is not None:
            await asyncio.to_thread(QUEUE.finish, self.engine, row.id, row.lease, state=PENDING, attempts=attempt,
                                    next_attempt_at=when, last_error=reason, last_status=status)
            log.info("notification attempt failed; retry scheduled", extra=ids | {"status": status})
            return
        if getattr(error, "retryable", True):
            reason = f"gave up after {attempt} attempt(s): {reason}"
        reason = f"notification {row.seq} ({'handshake' if row.kind == HANDSHAKE else 'event'}): {reason}"
        await asyncio.to_thread(QUEUE.finish, self.engine, row.id, row.lease, state=FAILED, attempts=attempt,
                                finished_at=utcnow(), last_error=reason, last_status=status,
                                then=partial(_subscription_error, row.subscription_id, reason))
        log.warning("subscription moved to error", extra=ids | {"status": status})

    async def _heartbeat(self, subscription: Subscription) -> None:
        bundle = notification_bundle(subscription, "heartbeat", [], base=self.base, content=subscription.content)
        try:
            await self._post(subscription, bundle)
        except EndpointError as error:
            log.info("heartbeat not delivered", extra={"subscription_id": subscription.id, "status": error.status})


def _after_sent(row: Notification, subscription: Subscription, connection: Connection) -> None:
    """In the transaction that records a sent notification: a handshake activates; every send resets the heartbeat."""
    table = SUBSCRIPTIONS
    now = utcnow()
    values: dict[str, Any] = {}
    if subscription.heartbeat_seconds:
        values["heartbeat_due_at"] = now + timedelta(seconds=subscription.heartbeat_seconds)
    if row.kind == HANDSHAKE:
        connection.execute(update(table).where(table.c.id == subscription.id, table.c.status == REQUESTED)
                           .values(status=ACTIVE, updated=now, row_version=table.c.row_version + 1, **values))
    elif values:
        connection.execute(update(table).where(table.c.id == subscription.id).values(**values))


def _subscription_error(subscription_id: str, reason: str, connection: Connection) -> None:
    """In the transaction that gives up on a notification: the subscription goes to error, its queue is dropped."""
    subs, notes = SUBSCRIPTIONS, NOTIFICATIONS
    now = utcnow()
    connection.execute(update(subs).where(subs.c.id == subscription_id, subs.c.status.in_((ACTIVE, REQUESTED)))
                       .values(status=ERROR, error=reason[:2000], updated=now, heartbeat_due_at=None,
                               row_version=subs.c.row_version + 1))
    connection.execute(update(notes).where(notes.c.subscription_id == subscription_id, notes.c.state == PENDING)
                       .values(state=DROPPED, finished_at=now, updated=now, last_error="subscription in error",
                               row_version=notes.c.row_version + 1))


def focus_resource(session: Session, store: ResourceStore, settings: Any, found: Event) -> dict[str, Any] | None:
    """The event's focus for full-resource payloads: the CarePlan version, or the delivery Task as it is now."""
    if found.focus_type == "CarePlan" and found.focus_id:
        try:
            return store.vread(session, "CarePlan", found.focus_id, str(found.focus_version)).parsed()
        except FhirError:
            return None
    if found.focus_type == "Task" and found.focus_id:
        delivery = session.get(Delivery, found.focus_id)
        if delivery is None:
            return None
        return task_resource(delivery, ehr_base=settings.EHR_BASE_URL.rstrip("/"),
                             max_attempts=settings.DELIVERY_MAX_ATTEMPTS,
                             max_age_end=as_utc(delivery.window_start) + settings.DELIVERY_MAX_AGE)
    return None
