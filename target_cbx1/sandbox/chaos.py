"""Chaos mode: the sandbox injects random faults, per request, at configurable rates.

`cbx1-sandbox --chaos SEED` (or `Sandbox(chaos=Chaos(seed=SEED))`) picks, for every authenticated data
request (/bulk, /upsert, /records) and every token request, at most one fault kind, each with its rate:

    429         429 with Retry-After: 1                     (default rate 0.03)
    429-bare    429 without Retry-After                     (0.01)
    500, 502, 503  that status with an HTML page            (0.02 each)
    html        200 with an HTML page instead of JSON       (0.01; not on the token endpoint)
    slow        write, then answer --chaos-slow-seconds late (default 2 s)  (0.01)
    drop        close the connection, nothing written       (0.02)
    drop-after  write, then close the connection unanswered (0.02)
    401         refuse the session token and revoke it      (0.01; not on the token endpoint)
    reject      400 naming one record's lookupKey, nothing written  (0.01; not on the token endpoint)
    omit        write all, leave one result out             (0.02; /bulk and /records only)

The defaults sum to 0.20. `--chaos-rate KIND=RATE` (repeatable) replaces all the defaults: kinds not
named then have rate 0, so `--chaos-rate drop-after=1` faults every request that way. A kind drawn for an
endpoint it does not apply to means no fault. Results of /bulk and /records are always shuffled.

Determinism: request N (counted from 0) to an endpoint (token, bulk, upsert or records) draws from
random.Random(f"{SEED}/{ENDPOINT}/{N}"), so the same seed gives the same faults to the same sequence of
requests per endpoint, whatever the interleaving between endpoints; concurrent requests to one endpoint
take their numbers in the order they arrive. GET /_sandbox/chaos answers the seed, rates, requests per
endpoint and faults injected per kind as JSON; what was written is in /_sandbox/records and /entities.
"""

from __future__ import annotations

import math
import random
import threading
import typing as t
from dataclasses import dataclass, field

from target_cbx1.sandbox.faults import Fault

DEFAULT_RATES = {
    "429": 0.03,
    "429-bare": 0.01,
    "500": 0.02,
    "502": 0.02,
    "503": 0.02,
    "html": 0.01,
    "slow": 0.01,
    "drop": 0.02,
    "drop-after": 0.02,
    "401": 0.01,
    "reject": 0.01,
    "omit": 0.02,
}
CHAOS_KINDS = tuple(DEFAULT_RATES)
ENDPOINTS = ("token", "bulk", "upsert", "records")
_NOT_ON = {
    "html": ("token",),  # the target rightly takes an HTML 200 from the token endpoint as a misconfiguration
    "401": ("token",),  # a 401 there means the access key is wrong: the run stops
    "reject": ("token",),
    "omit": ("token", "upsert"),
}


def parse_rate(text: str) -> tuple[str, float]:
    """KIND=RATE, as in drop=0.05; ValueError for an unknown kind or a rate outside 0..1."""
    kind, separator, rate = text.partition("=")
    if not separator or kind not in DEFAULT_RATES:
        raise ValueError(f"expected KIND=RATE with KIND one of {', '.join(CHAOS_KINDS)}, not {text!r}")
    try:
        value = float(rate)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise ValueError(f"a chaos rate is between 0 and 1, not {rate!r}")
    return kind, value


@dataclass
class Chaos:
    """A seeded random scheduler over fault kinds; thread-safe. `counts` holds the faults injected by kind."""

    seed: int
    rates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_RATES))
    slow_seconds: float = 2.0
    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ENDPOINTS, 0))
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHAOS_KINDS, 0))
    history: list[tuple[str, int, str | None]] = field(default_factory=list)  # (endpoint, N, kind)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.rates) - set(CHAOS_KINDS))
        if unknown:
            raise ValueError(f"unknown chaos kinds {unknown}: expected {', '.join(CHAOS_KINDS)}")
        if any(not 0 <= rate <= 1 for rate in self.rates.values()) or sum(self.rates.values()) > 1 + 1e-9:
            raise ValueError(f"chaos rates are each between 0 and 1 and sum to at most 1: {self.rates}")

    def fault(self, endpoint: str, keys: t.Sequence[str | None] = ()) -> Fault | None:
        """The fault for the next request to an endpoint carrying these lookup keys, or None."""
        with self._lock:
            number = self.requests[endpoint]
            self.requests[endpoint] += 1
        draw = random.Random(f"{self.seed}/{endpoint}/{number}")
        kind = self._kind(draw.random())
        named = sorted({key for key in keys if key is not None})
        if kind is not None and (endpoint in _NOT_ON.get(kind, ()) or (kind == "reject" and not named)):
            kind = None
        with self._lock:
            self.history.append((endpoint, number, kind))
            if kind is not None:
                self.counts[kind] += 1
        if kind is None:
            return None
        return self._as_fault(kind, draw.choice(named) if kind == "reject" else None)

    def _kind(self, value: float) -> str | None:
        total = 0.0
        for kind in CHAOS_KINDS:
            total += self.rates.get(kind, 0)
            if value < total:
                return kind
        return None

    def _as_fault(self, kind: str, key: str | None) -> Fault:
        """The scripted fault (see target_cbx1.sandbox.faults) a chaos kind stands for."""
        if kind == "429-bare":
            return Fault("status", "429")
        if kind == "html":
            return Fault("body", "html")
        if kind == "slow":
            return Fault("slow", str(self.slow_seconds))
        if kind == "reject":
            return Fault("reject", key)
        if kind == "omit":
            return Fault("omit", "1")
        return Fault(kind)  # 429 (Retry-After: 1), 500, 502, 503, drop, drop-after, 401

    def report(self) -> dict[str, t.Any]:
        """JSON-ready: the seed, the rates, requests seen per endpoint and faults injected per kind."""
        with self._lock:
            return {
                "seed": self.seed,
                "rates": dict(self.rates),
                "slow_seconds": self.slow_seconds,
                "requests": dict(self.requests),
                "faults": dict(self.counts),
            }
