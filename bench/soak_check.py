"""The soak's invariants: what the target's state says, checked against what the sandbox saw and holds.

Pure functions over plain data, so that each check can be tested with a made-up violation. A record
is identified by `seq`, its position in the input; `scope` is where CBX1 files its key: a flat
stream's name (accounts, contacts) or an envelope's object type (ACCOUNT, CONTACT).
"""

from __future__ import annotations

import base64
import bisect
import collections
import re
import typing as t
import urllib.parse
from dataclasses import dataclass, field

SUPERSEDED = "superseded: "
ENVELOPE_SCOPES = (
    "ACCOUNT",
    "CONTACT",
)  # the records endpoint's object types; other scopes are /bulk streams
# A failure the run gave up on: the kind of fault, told by the target's reason (docs/failures.md).
FAULT_REASONS = (
    (re.compile(r"HTTP (\d{3})\b.*gave up after"), "HTTP {0} (retries spent)"),
    (re.compile(r"no answer within .*gave up after"), "timeout (retries spent)"),
    (re.compile(r"connection failed.*gave up after"), "connection dropped (retries spent)"),
    (re.compile(r"no result returned for lookupKey"), "result missing"),
    (re.compile(r"not the documented JSON envelope"), "HTML answer (retries spent)"),
    (re.compile(r"HTTP 400: Validation failed for record"), "400 naming the record"),
)


@dataclass(frozen=True)
class InputRecord:
    """One input record, as the soak generated it. `design`: valid, local (fails a local check) or
    rejected (CBX1 refuses it, with `rejection` in its message)."""

    seq: int
    stream: str
    scope: str
    key: str | None
    external_id: str
    design: str = "valid"
    rejection: str | None = None


@dataclass(frozen=True)
class Attempt:
    """One data request as the sandbox saw it: the run that sent it, when it arrived and when its answer
    was out (or the client hung up), and the (scope, key, seq) of each record in it."""

    run: int
    started: float
    ended: float
    items: tuple[tuple[str, str | None, int | None], ...]


@dataclass
class Findings:
    """Counts for the table, and violations by invariant (a few examples each)."""

    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    violations: dict[str, list[str]] = field(default_factory=dict)
    by_contract: collections.Counter[str] = field(default_factory=collections.Counter)

    def violate(self, invariant: str, example: str, scope: str | None = None) -> None:
        """Note a violation; with the scope of the record concerned, counted for its contract."""
        self.violations.setdefault(invariant, []).append(example)
        self.by_contract[contract_of(scope) if scope is not None else "run"] += 1

    def total_violations(self) -> int:
        return sum(len(examples) for examples in self.violations.values())


def contract_of(scope: str) -> str:
    return "envelope" if scope in ENVELOPE_SCOPES else "flat"


def entries_by_record(
    records: t.Sequence[InputRecord], state: t.Mapping[str, t.Any], findings: Findings
) -> dict[int, dict[str, t.Any]]:
    """Exactly one entry per input record, in input order: seq -> its entry."""
    by_stream: dict[str, list[InputRecord]] = collections.defaultdict(list)
    for record in records:
        by_stream[record.stream].append(record)
    bookmarks = state.get("bookmarks", {})
    entries: dict[int, dict[str, t.Any]] = {}
    for stream, expected in by_stream.items():
        listed, scope = bookmarks.get(stream, []), expected[0].scope
        findings.counts[f"records, {contract_of(scope)}"] += len(expected)
        if len(listed) != len(expected):
            findings.violate(
                "one entry per record", f"{stream}: {len(listed)} entries for {len(expected)}", scope
            )
        for record, entry in zip(expected, listed, strict=False):  # lengths checked above
            if entry.get("externalId") != record.external_id:
                findings.violate(
                    "one entry per record",
                    f"{stream}: entry {entry.get('externalId')!r} where {record.external_id!r} is",
                    scope,
                )
                break
            entries[record.seq] = entry
    findings.counts["entries"] = sum(len(listed) for listed in bookmarks.values())
    return entries


def check_successes(
    records: t.Sequence[InputRecord],
    entries: t.Mapping[int, t.Mapping[str, t.Any]],
    store: t.Mapping[tuple[str, str], tuple[str, int]],
    writes: t.Mapping[tuple[str, str], t.Collection[int]],
    findings: Findings,
) -> None:
    """Every success is CBX1's: the id it holds for the key, and a record it wrote."""
    for record in records:
        entry = entries.get(record.seq)
        if entry is None or entry.get("success") is not True:
            continue
        place = (record.scope, str(record.key))
        held = store.get(place)
        invariant, scope = "no success CBX1 does not hold", record.scope
        if record.design != "valid":
            findings.violate(invariant, f"seq {record.seq} ({record.design}) succeeded", scope)
        elif held is None or entry.get("id") != held[0]:
            findings.violate(invariant, f"seq {record.seq}: id {entry.get('id')}", scope)
        elif record.seq not in writes.get(place, ()):
            findings.violate(invariant, f"seq {record.seq}: never written", scope)
        else:
            findings.counts["successes verified"] += 1
            findings.counts[f"successes verified, {contract_of(scope)}"] += 1


def classify_failures(
    records: t.Sequence[InputRecord],
    entries: t.Mapping[int, t.Mapping[str, t.Any]],
    sent: t.Collection[int],
    findings: Findings,
) -> None:
    """Every failure has a reason, and one of: a local check, CBX1's rejection, a fault given up on,
    or superseded by a later record of its key that succeeded."""
    later_success = _later_successes(records, entries)
    for record in records:
        entry = entries.get(record.seq)
        if entry is None or entry.get("success") is not False:
            continue
        error = str(entry.get("error") or "")
        reason = _failure_reason(record, error, record.seq in sent, later_success)
        if reason is None:
            findings.violate(
                "every failure has a known cause",
                f"seq {record.seq} ({record.design}): {error!r}",
                record.scope,
            )
        else:
            findings.failures[reason] += 1


def _later_successes(
    records: t.Sequence[InputRecord], entries: t.Mapping[int, t.Mapping[str, t.Any]]
) -> set[int]:
    """The seqs of records followed, later in the input, by a success of their key."""
    succeeded: set[tuple[str, str | None]] = set()
    followed = set()
    for record in reversed(records):
        place = (record.scope, record.key)
        if record.key is not None and place in succeeded:
            followed.add(record.seq)
        if (entries.get(record.seq) or {}).get("success") is True:
            succeeded.add(place)
    return followed


def _failure_reason(record: InputRecord, error: str, was_sent: bool, later_success: set[int]) -> str | None:
    if not error:
        return None
    if error.startswith(SUPERSEDED):
        return "superseded by a later record" if record.seq in later_success else None
    if record.design == "local":
        return "local check" if not was_sent else None
    if record.design == "rejected" and record.rejection and record.rejection in error:
        return "rejected by CBX1"
    for pattern, label in FAULT_REASONS:
        if match := pattern.search(error):
            return "fault: " + label.format(*match.groups())
    return None


def check_in_flight(attempts: t.Iterable[Attempt], findings: Findings) -> None:
    """Never two requests carrying one key in flight at once."""
    spans: dict[tuple[str, str], list[tuple[float, float, int]]] = collections.defaultdict(list)
    for attempt in attempts:
        for scope, key, _seq in attempt.items:
            if key is not None:
                spans[(scope, key)].append((attempt.started, attempt.ended, attempt.run))
    for place, intervals in spans.items():
        intervals.sort()
        busy_until = -1.0
        for started, ended, run in intervals:
            if started < busy_until:
                findings.violate(
                    "one request per key in flight", f"{place} twice at {started:.3f} (run {run})", place[0]
                )
            busy_until = max(busy_until, ended)


def check_rate(starts: t.Mapping[int, list[float]], limit: float, findings: Findings) -> None:
    """No run starts more than `limit` requests within any one second, from the target's side:
    `starts` holds, per run, when its rate limiter let each request start."""
    for run, times in starts.items():
        peak = _peak(sorted(times), 1.0)
        findings.counts["peak request starts in 1 s"] = max(
            findings.counts["peak request starts in 1 s"], peak
        )
        if peak > limit:
            findings.violate("max_requests_per_second", f"run {run}: {peak} requests started in 1 s")


def arrival_peak(attempts: t.Iterable[Attempt]) -> int:
    """The most requests of one run that reached the sandbox within one second. It can pass the
    limit by a few: a request waits for a thread of the target's to send it, and so bunches up."""
    arrivals: dict[int, list[float]] = collections.defaultdict(list)
    for attempt in attempts:
        arrivals[attempt.run].append(attempt.started)
    return max((_peak(sorted(times), 1.0) for times in arrivals.values()), default=0)


def _peak(times: list[float], window: float) -> int:
    """The most of the sorted times within any `window` seconds."""
    return max((bisect.bisect_left(times, start + window) - i for i, start in enumerate(times)), default=0)


def check_last_write(
    records: t.Sequence[InputRecord],
    entries: t.Mapping[int, t.Mapping[str, t.Any]],
    store: t.Mapping[tuple[str, str], tuple[str, int]],
    findings: Findings,
) -> int:
    """For each key, CBX1 holds the last record whose entry is a success, or a later record whose answer
    was lost (its entry failed): those are counted and returned. Anything else is a violation."""
    last_success: dict[tuple[str, str], int] = {}
    later_failed: dict[tuple[str, str], set[int]] = collections.defaultdict(set)
    for record in records:
        if record.key is None:
            continue
        place, entry = (record.scope, record.key), entries.get(record.seq) or {}
        if entry.get("success") is True:
            last_success[place] = record.seq
            later_failed[place].clear()
        elif entry.get("success") is False:
            later_failed[place].add(record.seq)
    held_but_failed = 0
    for place, (_id, seq) in store.items():
        if seq == last_success.get(place):
            continue
        if seq in later_failed.get(place, ()):
            held_but_failed += 1
        else:
            findings.violate(
                "last write wins",
                f"{place} holds seq {seq}, last success {last_success.get(place)}",
                place[0],
            )
    return held_but_failed


def check_no_older_resend(
    records: t.Sequence[InputRecord],
    attempts: t.Iterable[Attempt],
    confirmed_at_start: t.Mapping[int, t.Collection[int]],
    findings: Findings,
) -> None:
    """A run never sends a record when the state it started from holds a success for a later record
    of the same key."""
    newest: dict[int, dict[tuple[str, str], int]] = {}
    by_seq = {record.seq: record for record in records}
    for run, confirmed in confirmed_at_start.items():
        latest: dict[tuple[str, str], int] = {}
        for seq in confirmed:
            record = by_seq[seq]
            if record.key is not None:
                place = (record.scope, record.key)
                latest[place] = max(latest.get(place, -1), seq)
        newest[run] = latest
    for attempt in attempts:
        latest = newest.get(attempt.run, {})
        for scope, key, seq in attempt.items:
            if key is not None and seq is not None and latest.get((scope, key), -1) > seq:
                findings.violate(
                    "no older record re-sent",
                    f"run {attempt.run} sent seq {seq} after seq {latest[(scope, key)]}",
                    scope,
                )


def check_secrets(texts: t.Mapping[str, bytes], secrets: t.Iterable[str], findings: Findings) -> None:
    """No secret, raw or encoded, in any output or written file (name -> content)."""
    needles = {variant for secret in secrets for variant in encodings(secret)}
    for name, content in texts.items():
        for needle in needles:
            if needle in content:
                findings.violate("no secret in output", f"{name} holds a secret")
                break


def encodings(secret: str) -> set[bytes]:
    """A secret as it could leak: raw, URL- and hex-encoded, and base64 at any of its three alignments
    inside a longer text (the part of the code that does not depend on what is around it)."""
    raw = secret.encode()
    found = {raw, urllib.parse.quote(secret, safe="").encode(), raw.hex().encode()}
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            code = encode(b"\0" * shift + raw)
            found.add(code[4 if shift else 0 : -4])
    return found
