"""Scripted faults: what the sandbox does wrong, to which requests, and how many times.

A fault is written `KIND[=ARG][*COUNT]`; it applies to the next COUNT data requests (default 1,
`*always` for every one) on /bulk, /upsert and /records alike. `reject=KEY` applies to every
request carrying that lookup key (for /records, a record's normalised lookupKey).

    429=2        429 Too Many Requests with Retry-After: 2 (seconds; default 1)
    500..504     that status with an HTML body, as a gateway sends
    401          the session token is refused once, as when it was revoked
    slow=SECONDS write, then answer SECONDS late (default 5), as a server that is merely slow
    drop         close the connection without answering (nothing is written)
    omit=N       leave N results out of a /bulk or /records answer (default 1)
    not-cm000    HTTP 200 whose envelope says the request failed
    body=KIND    HTTP 200 with a body that is not the envelope: html, empty or truncated
    reject=KEY   400 naming the record with that lookup key, for /bulk, /upsert and /records alike
"""

from __future__ import annotations

import re
import threading
import typing as t
from dataclasses import dataclass, field

GATEWAY_STATUSES = ("500", "502", "503", "504")
KINDS = ("429", "401", "slow", "drop", "omit", "not-cm000", "body", "reject", *GATEWAY_STATUSES)
BODY_KINDS = ("html", "empty", "truncated")
_SPEC = re.compile(r"^(?P<kind>[a-z0-9\-]+)(?:=(?P<arg>[^*]+))?(?:\*(?P<count>\d+|always))?$")


class FaultSpecError(ValueError):
    """A fault spec the sandbox cannot read."""


@dataclass
class Fault:
    """One scripted fault; `remaining` is None when it applies to every request."""

    kind: str
    arg: str | None = None
    remaining: int | None = 1

    @classmethod
    def parse(cls, spec: str) -> Fault:
        match = _SPEC.match(spec.strip())
        if not match or match["kind"] not in KINDS:
            raise FaultSpecError(f"unknown fault {spec!r}: expected one of {', '.join(KINDS)}")
        kind, arg, count = match["kind"], match["arg"], match["count"]
        if kind == "reject" and not arg:
            raise FaultSpecError("reject needs the lookup key it rejects, as in reject=bad.example.com")
        if kind == "body" and arg not in BODY_KINDS:
            raise FaultSpecError(f"body needs one of {', '.join(BODY_KINDS)}, as in body=html")
        if kind in ("429", "slow", "omit") and arg is not None and not _is_number(arg):
            raise FaultSpecError(f"{kind} takes a number, not {arg!r}")
        if kind == "reject":
            return cls(kind, arg.strip().lower(), None)
        return cls(kind, arg, None if count == "always" else int(count or 1))

    def number(self, default: float) -> float:
        return float(self.arg) if self.arg is not None else default


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass
class FaultScript:
    """The faults still to happen; thread-safe, consumed in the order they were added."""

    faults: list[Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, spec: str) -> None:
        fault = Fault.parse(spec)
        with self._lock:
            self.faults.append(fault)

    def take(self, lookup_keys: t.Collection[str | None]) -> Fault | None:
        """The fault for a data request carrying these keys, used up by one if it is counted."""
        with self._lock:
            for fault in self.faults:
                if fault.kind == "reject":
                    if fault.arg in lookup_keys:
                        return fault
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self.faults.remove(fault)
                return fault
        return None
