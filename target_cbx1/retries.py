"""What each HTTP answer means for the request (one table), and how long to wait before a retry."""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import backoff


class Action(enum.Enum):
    """What the client does with an answer."""

    ACCEPT = "read the envelope"
    REDIRECT = "stop the run: api_url is not the API's address"
    RETRY = "back off and send again"
    REFRESH_TOKEN = "fetch a new session token and send again (up to TOKEN_REFRESHES times)"
    DENY = "stop the run: the credentials lack permission"
    REJECT = "fail the request's records: the request itself is wrong"


RETRIED_STATUSES = frozenset({408, 429})


def action_for(status: int) -> Action:
    """The response-to-action table: 2xx accept, 3xx redirect, 401 refresh, 403 deny, 408/429/5xx
    retry, else reject.
    """
    if 200 <= status < 300:
        return Action.ACCEPT
    if 300 <= status < 400 and status != 304:  # 304 Not Modified points nowhere: a rejection
        return Action.REDIRECT
    if status == 401:
        return Action.REFRESH_TOKEN
    if status == 403:
        return Action.DENY
    if status in RETRIED_STATUSES or status >= 500:
        return Action.RETRY
    return Action.REJECT


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delta seconds or HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, never sooner than the server's Retry-After."""

    max_retries: int
    base_seconds: float
    max_seconds: float
    retry_after_max_seconds: float

    def delays(self) -> itertools.islice[float]:
        """The jittered backoff before retry 1, 2, ... max_retries."""
        steps = backoff.expo(base=2, factor=self.base_seconds, max_value=self.max_seconds)
        next(steps)  # the generator's priming value
        jittered = (value / 2 + backoff.full_jitter(value / 2) for value in steps)
        return itertools.islice(jittered, self.max_retries)

    def wait_for(self, backoff_seconds: float, retry_after: float | None) -> float | None:
        """Seconds to wait before the next attempt; None when the server asks for longer than allowed."""
        if retry_after is None:
            return backoff_seconds
        if retry_after > self.retry_after_max_seconds:
            return None
        return max(backoff_seconds, retry_after)
