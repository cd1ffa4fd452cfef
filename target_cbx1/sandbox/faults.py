"""Scripted faults: what the sandbox does wrong, to which requests, and how many times.

A fault is written `KIND[=ARG][*COUNT]`; it applies to the next COUNT data requests (default 1,
`*always` for every one) on /bulk, /upsert and /records alike. `reject=KEY` applies to every
request carrying that lookup key (for /records, a record's normalised lookupKey). For `answer`, ARG
is everything after the first `=` (it may hold `=` and `*`); only a trailing `*N` or `*always` is COUNT.
slow, trickle, omit, conflict and drop-after write the records and change the real answer; the others
store nothing.

    429=2            429 Too Many Requests with Retry-After: 2 (seconds; default 1)
    500..504         that status with an HTML body, as a gateway sends
    401              the session token is refused once, as when it was revoked
    slow=SECONDS     write, then answer SECONDS late (default 5), as a server that is merely slow
    trickle=SECONDS  write, send the status and headers at once, then the body a byte at a time over
                     SECONDS (default 5): no single read waits long, the whole answer takes SECONDS
    trickle-head=SECONDS  the same, the status line and headers a byte at a time too
    drop             close the connection without answering (nothing is written)
    drop-after       write the records, then close the connection without answering
    omit=N           leave N results out of a /bulk or /records answer (default 1)
    conflict         answer the first result of a /bulk or /records batch twice, the second time with
                     the same lookupKey and the opposite outcome (error "Duplicate record" if a failure)
    not-cm000        HTTP 200 whose envelope says the request failed
    body=KIND        HTTP 200 with a body that is not the envelope: html, empty or truncated
    answer=JSON      HTTP 200 with exactly that JSON text as the body; answer=@NAME for a canned one:
                     @upsert-false (data.success false), @data-null (data null), @no-data (no data)
    status=CODE      that status (200..599) with the envelope CM<CODE> "Scripted CODE" (404: "No route
                     for POST PATH", 405: "Method not allowed"); 204, 205 and 304 have no body
    redirect=CODE    301, 302 (default), 303, 307 or 308 to /moved + the same path, with an empty body
    reject=KEY       400 naming the record with that lookup key, for /bulk, /upsert and /records alike
"""

from __future__ import annotations

import json
import math
import re
import threading
import typing as t
from dataclasses import dataclass, field

GATEWAY_STATUSES = ("500", "502", "503", "504")
KINDS = (
    "429",
    "401",
    "slow",
    "trickle",
    "trickle-head",
    "drop",
    "drop-after",
    "omit",
    "conflict",
    "not-cm000",
    "body",
    "answer",
    "status",
    "redirect",
    "reject",
    *GATEWAY_STATUSES,
)
WRITING_KINDS = (
    "slow",
    "trickle",
    "trickle-head",
    "omit",
    "conflict",
    "drop-after",
)  # the real answer, changed: the records are written
BODY_KINDS = ("html", "empty", "truncated")
REDIRECT_STATUSES = ("301", "302", "303", "307", "308")
CANNED_ANSWERS = {
    "upsert-false": (
        '{"status":{"code":"CM000","message":"Success"},"data":{"success":false,"error":"Rejected by rule"}}'
    ),
    "data-null": '{"status":{"code":"CM000","message":"Success"},"data":null}',
    "no-data": '{"status":{"code":"CM000","message":"Success"}}',
}
_SPEC = re.compile(r"^(?P<kind>[a-z0-9\-]+)(?:=(?P<arg>[^*]+))?(?:\*(?P<count>\d+|always))?$")
_ANSWER_SPEC = re.compile(r"^(?P<kind>answer)=(?P<arg>.*?)(?:\*(?P<count>\d+|always))?$", re.DOTALL)


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
        text = spec.strip()
        match = _ANSWER_SPEC.match(text) or _SPEC.match(text)
        if not match or match["kind"] not in KINDS:
            raise FaultSpecError(f"unknown fault {spec!r}: expected one of {', '.join(KINDS)}")
        kind, arg, count = match["kind"], match["arg"], match["count"]
        _check_arg(kind, arg)
        if kind == "reject":
            return cls(kind, arg.strip().lower(), None)
        return cls(kind, arg, None if count == "always" else int(count or 1))

    def number(self, default: float) -> float:
        return float(self.arg) if self.arg is not None else default

    def answer_body(self) -> str:
        """The body an answer fault sends: its JSON text, or the canned body it names with @NAME."""
        arg = self.arg or ""
        return CANNED_ANSWERS[arg[1:]] if arg.startswith("@") else arg


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_arg(kind: str, arg: str | None) -> None:
    """FaultSpecError unless ARG is one this kind of fault can take."""
    if kind == "reject" and not arg:
        raise FaultSpecError("reject needs the lookup key it rejects, as in reject=bad.example.com")
    if kind == "body" and arg not in BODY_KINDS:
        raise FaultSpecError(f"body needs one of {', '.join(BODY_KINDS)}, as in body=html")
    if kind in ("429", "slow", "omit", "trickle", "trickle-head") and arg is not None and not _is_number(arg):
        raise FaultSpecError(f"{kind} takes a number, not {arg!r}")
    if kind in ("trickle", "trickle-head") and arg is not None and not 0 <= float(arg) < math.inf:
        raise FaultSpecError(f"{kind} takes a number of seconds, 0 or more, not {arg!r}")
    if kind == "redirect" and arg is not None and arg not in REDIRECT_STATUSES:
        raise FaultSpecError(f"redirect takes one of {', '.join(REDIRECT_STATUSES)}, not {arg!r}")
    if kind == "status" and not (arg and re.fullmatch(r"[2-5][0-9][0-9]", arg)):
        given = "" if arg is None else f", not {arg!r}"
        raise FaultSpecError(f"status needs an HTTP status 200..599, as in status=409{given}")
    if kind == "conflict" and arg is not None:
        raise FaultSpecError(f"conflict takes no argument, not {arg!r}")
    if kind == "answer":
        _check_answer(arg)


def _check_answer(arg: str | None) -> None:
    """FaultSpecError unless an answer fault's ARG is JSON text or @NAME of a canned body."""
    names = ", ".join(f"@{name}" for name in CANNED_ANSWERS)
    if not arg:
        raise FaultSpecError(f'answer needs JSON text or one of {names}, as in answer={{"data":null}}')
    if arg.startswith("@"):
        if arg[1:] not in CANNED_ANSWERS:
            raise FaultSpecError(f"unknown canned answer {arg!r}: expected one of {names}")
        return
    try:
        json.loads(arg, parse_constant=_refuse_constant)
    except ValueError as error:
        raise FaultSpecError(f"answer takes JSON text or one of {names}: {error}") from None


def _refuse_constant(name: str) -> t.NoReturn:
    raise ValueError(f"{name} is not JSON")


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
