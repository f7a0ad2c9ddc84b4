"""When to try a delivery again: exponential backoff with jitter, Retry-After, and the two bounds.

Retries here are *scheduled*, not slept: a failed attempt writes `next_attempt_at`
on the outbox row and the dispatcher moves on, so a retry survives a restart and
never holds a worker. That is why this is one small function and not tenacity,
whose retry loops live inside one call.

    delay = max(Retry-After, uniform(b/2, b)) where b = min(cap, base * 2**(attempt-1))

"Equal jitter": at least half the exponential step (a herd of workers never retries
sooner than the backoff intends), at most the full step (spread so they do not
retry in lock-step). Retry-After is a floor, honoured in both of its forms.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds ('120') or an HTTP-date; None if absent or bad.

    >>> parse_retry_after("3")
    3.0
    >>> parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=datetime(2015, 10, 21, 7, 27, 30, tzinfo=UTC))
    30.0
    >>> parse_retry_after("soon") is None
    True
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


def backoff_seconds(attempt: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """The jittered delay after the `attempt`-th failure (1-based)."""
    step = min(cap, base * 2 ** max(0, attempt - 1))
    return (rng or random).uniform(step / 2, step)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    max_age: timedelta
    base: float
    cap: float

    def next_attempt(self, *, attempts: int, window_start: datetime, now: datetime,
                     retry_after: float | None = None, rng: random.Random | None = None) -> datetime | None:
        """When to try again after `attempts` failed attempts, or None when a bound says give up."""
        if attempts >= self.max_attempts:
            return None
        delay = backoff_seconds(attempts, base=self.base, cap=self.cap, rng=rng)
        if retry_after is not None:
            delay = max(delay, retry_after)
        when = now + timedelta(seconds=delay)
        if when > window_start + self.max_age:
            return None
        return when
