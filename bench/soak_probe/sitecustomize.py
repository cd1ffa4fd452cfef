"""Loaded by the soak into each run of target-cbx1 (through PYTHONPATH), and only there: it notes when
the rate limiter lets each request start, one monotonic time a line in $SOAK_STARTS_FILE, so that the
soak checks max_requests_per_second from the target's side. It changes nothing the target does.

The times are the limiter's own: those it keeps in its window (`RateLimiter._started`), noted as it
adds them under its lock, so a thread that waits for the GIL afterwards does not shift them.
"""

from __future__ import annotations

import collections
import os
import typing as t

_PATH = os.environ.get("SOAK_STARTS_FILE")

if _PATH:
    from target_cbx1.ratelimit import RateLimiter

    _out = open(_PATH, "a", buffering=1)  # noqa: SIM115  # a line a write: a SIGKILL loses none

    class _NotedWindow(collections.deque):  # type: ignore[type-arg]
        def append(self, started: t.Any) -> None:
            super().append(started)
            _out.write(f"{started}\n")

    _init = RateLimiter.__init__

    def _noted_init(self: RateLimiter, *args: t.Any, **kwargs: t.Any) -> None:
        _init(self, *args, **kwargs)
        self._started = _NotedWindow(self._started)

    RateLimiter.__init__ = _noted_init  # type: ignore[method-assign]
