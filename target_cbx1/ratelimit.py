"""The client-side request rate: a ceiling over any one-second window, halved on 429 (once per window,
however many requests got one), regained slowly."""

from __future__ import annotations

import collections
import threading
import time
import typing as t

RECOVERY_FACTOR = 1.2  # after each second without a 429, the allowed rate grows by this factor
MIN_RATE = 1.0
# The window counted: a little over a second, so that network jitter cannot crowd more requests than
# the limit into one second at the server.
WINDOW_SECONDS = 1.05


class RateLimiter:
    """Shared by all requests of a run; `acquire()` blocks until a request may start.

    With no ceiling the rate is free until the first 429; from then on it is limited to half the
    rate that drew the 429, and grows back by RECOVERY_FACTOR a second until it is free again.
    """

    def __init__(self, max_per_second: float | None, clock: t.Callable[[], float] = time.monotonic) -> None:
        self.ceiling = max_per_second
        self.rate = max_per_second
        self._clock = clock
        self._started: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()
        self._changed_at = clock()
        self._halved_at = -WINDOW_SECONDS  # never yet

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = self._clock()
                self._forget_before(now - WINDOW_SECONDS)
                self._recover(now)
                if self.rate is None or len(self._started) < int(self.rate):
                    self._started.append(now)
                    return
                wait = self._started[0] + WINDOW_SECONDS - now
            time.sleep(max(wait, 0.001))

    def slow_down(self) -> None:
        """A 429: halve the rate of the last second (or the current limit, if lower). The other 429s
        of the same window answered requests sent at that rate: they do not halve it again."""
        with self._lock:
            now = self._clock()
            if now - self._halved_at < WINDOW_SECONDS:
                return
            self._halved_at = now
            self._forget_before(now - WINDOW_SECONDS)
            recent = float(max(len(self._started), 1))
            current = recent if self.rate is None else min(self.rate, recent)
            self.rate = max(MIN_RATE, current / 2)
            self._changed_at = now

    def _recover(self, now: float) -> None:
        if self.rate is None or self.rate == self.ceiling or now - self._changed_at < 1.0:
            return
        grown = self.rate * RECOVERY_FACTOR ** int(now - self._changed_at)
        self._changed_at = now
        if self.ceiling is not None:
            self.rate = min(grown, self.ceiling)
        else:
            self.rate = None if grown > 2 * len(self._started) + 10 else grown

    def _forget_before(self, moment: float) -> None:
        while self._started and self._started[0] <= moment:
            self._started.popleft()
