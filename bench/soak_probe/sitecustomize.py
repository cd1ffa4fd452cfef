"""Loaded by the soak into each run of target-cbx1 (through PYTHONPATH), and only there: it notes when
the rate limiter lets each request start, one monotonic time a line in $SOAK_STARTS_FILE, so that the
soak checks max_requests_per_second from the target's side. It changes nothing the target does."""

from __future__ import annotations

import os
import threading
import time

_PATH = os.environ.get("SOAK_STARTS_FILE")

if _PATH:
    from target_cbx1.ratelimit import RateLimiter

    _acquire = RateLimiter.acquire
    _out = open(_PATH, "a", buffering=1)  # noqa: SIM115  # a line a write: a SIGKILL loses none
    _lock = threading.Lock()

    def _noted_acquire(self: RateLimiter) -> None:
        _acquire(self)
        with _lock:
            _out.write(f"{time.monotonic()}\n")

    RateLimiter.acquire = _noted_acquire  # type: ignore[method-assign]
