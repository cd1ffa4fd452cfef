"""The state HotGlue reads: one entry per input record, in input order, and a summary per stream."""

from __future__ import annotations

import collections
import functools
import itertools
import re
import threading
import typing as t
from dataclasses import dataclass, field, replace

import msgspec

from target_cbx1.jsonio import encode_text
from target_cbx1.redaction import mask

if t.TYPE_CHECKING:
    from _typeshed import SupportsWrite

SUMMARY_KEYS = ("success", "fail", "existing", "updated")
WRITE_PIECE_CHARS = 1 << 20
COMPACT_EVERY = 256  # entries added between two passes that compact the decided ones
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
PLAIN_VALUES = (str, int, bool, type(None))
MAX_REASONS = 50  # distinct failure reasons counted per stream; the failures past them count as OTHER
OTHER_REASONS = "other reasons (each record's own error is in the state)"
# A digit first, then what may not come before it: the regex engine then skips to the digits
ISO_TIME = r"\d(?<!\w\d)\d{3}-\d\d-\d\d(?:[T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?)?(?:Z|[+-]\d\d:?\d\d)?"
# Parts of a failure's reason that name the record, not the kind of failure, in the order applied
RECORD_SPECIFIC = (
    (re.compile(r"^(?:\S+ )?line \d+: "), ""),  # where the record was read: "line 12: "
    (re.compile(r"^(?:\S+ )?line \d+ (?=is )"), "the record "),  # "line 12 is a string, ..."
    (re.compile(r"'(?<!\w')(?:[^'\\]|\\.)*'(?!\w)"), "'...'"),  # a quoted value: 'not a domain'
    (re.compile(r"\(CRM id [^)]*\)"), "(CRM id ...)"),
    (re.compile(ISO_TIME), "..."),  # a date or time: a deletion's _sdc_deleted_at
    (re.compile(r"\d(?<!\w\d)(?<!HTTP \d)\d*(?!\w)"), "N"),  # counts, sizes, positions; not an HTTP status
)
_packer = msgspec.msgpack.Encoder()
_unpacker = msgspec.msgpack.Decoder()


class Entry:
    """One record's outcome; pending (success is None) until the API or the target decides it."""

    __slots__ = (
        "batch_id",
        "decisions",
        "error",
        "existing",
        "external_id",
        "hash",
        "id",
        "lookup_key",
        "mapped_record",
        "original",
        "refused",
        "replaced",
        "success",
        "updated",
    )

    def __init__(
        self,
        record_hash: str,
        external_id: t.Any,
        original: Entry | None = None,
        decisions: collections.deque[Entry] | None = None,
    ) -> None:
        self.hash = record_hash
        self.decisions = decisions  # where a decision is noted for the incremental journal, when kept
        self.external_id = external_id
        self.original = original
        self.lookup_key: str | None = None
        self.success: bool | None = None
        self.id: str | None = None
        self.error: str | None = None
        self.updated = False
        self.existing = False
        self.batch_id: str | None = None
        self.mapped_record: dict[str, t.Any] | None = None
        self.replaced = False
        self.refused = False  # failed by the target's own checks, never sent (not kept when compacted)

    @classmethod
    def from_bookmark(cls, bookmark: t.Mapping[str, t.Any], original: Entry | None) -> Entry:
        """An entry written by an earlier run of the job, as its state file holds it."""
        entry = cls(str(bookmark.get("hash")), bookmark.get("externalId"), original)
        entry.success = bool(bookmark.get("success"))
        entry.id = bookmark.get("id")
        entry.error = bookmark.get("error")
        entry.lookup_key = bookmark.get("lookupKey")
        entry.batch_id = bookmark.get("hgBatchId")
        entry.mapped_record = bookmark.get("mapped_record")
        return entry

    def succeed(self, cbx1_id: str | None, *, updated: bool = False, existing: bool = False) -> None:
        """CBX1 holds the record; `existing`: it already held the same data (SKIPPED), nothing was written.

        `success` is set last: a state saved from another thread meanwhile never holds half an outcome.
        """
        self.id, self.updated, self.existing = cbx1_id, updated, existing
        self.success = True
        if self.decisions is not None:
            self.decisions.append(self)

    def fail(self, error: str) -> None:
        """The record was not written; the reason, with any secret a server echoed masked."""
        self.error = mask(error)
        self.success = False
        if self.decisions is not None:
            self.decisions.append(self)

    def refuse(self, error: str) -> None:
        """The target's own checks refused the record: it fails without being sent."""
        self.refused = True
        self.fail(error)

    @property
    def outcome(self) -> Entry:
        """The entry whose result this one reports: the first of identical records."""
        return self.original or self

    @property
    def summary_key(self) -> str:
        """existing (a repeat, or data CBX1 already held), else fail, updated or success."""
        if self.original is not None or self.outcome.existing:
            return "existing"
        if not self.success:
            return "fail"
        return "updated" if self.updated else "success"

    def take_outcome(self, earlier: Entry) -> None:
        """The outcome an earlier run of the job confirmed for this record (the journal has it already)."""
        self.id, self.success = earlier.id, True
        self.lookup_key = earlier.lookup_key
        self.batch_id = earlier.batch_id
        self.mapped_record = earlier.mapped_record

    def as_bookmark(self) -> dict[str, t.Any]:
        outcome = self.outcome
        bookmark: dict[str, t.Any] = {
            "hash": self.hash,
            "success": outcome.success,
            "id": outcome.id,
            "externalId": self.external_id,
            "lookupKey": outcome.lookup_key,
        }
        if not outcome.success:
            bookmark["error"] = outcome.error
        if self.batch_id is not None:
            bookmark["hgBatchId"] = self.batch_id
        if self.mapped_record is not None:
            bookmark["mapped_record"] = self.mapped_record
        return bookmark


@functools.lru_cache(maxsize=4096)
def reason_of(error: str) -> str:
    """A failure's reason without what names the record (its line, quoted values, numbers), so
    the failures of one kind count together.
    """
    for pattern, replacement in RECORD_SPECIFIC:
        error = pattern.sub(replacement, error)
    return error


@dataclass
class Tally:
    """This run's records of a stream by outcome, and its failures by (not sent, reason)."""

    received: int = 0
    succeeded: int = 0
    existing: int = 0
    failed: int = 0  # sent, and failed by CBX1 or the network
    not_sent: int = 0  # failed the target's own checks
    reasons: collections.Counter[tuple[bool, str]] = field(default_factory=collections.Counter)

    @property
    def undecided(self) -> int:
        """Records with no outcome yet (queued or in flight when the run stopped)."""
        return self.received - self.succeeded - self.existing - self.failed - self.not_sent

    def count(self, entry: Entry) -> None:
        """Count one decided entry of the stream."""
        key = entry.summary_key
        if key == "existing":
            self.existing += 1
        elif key != "fail":
            self.succeeded += 1
        else:
            self.count_failure(entry)

    def count_failure(self, entry: Entry) -> None:
        """Count a failed entry by its reason; reasons past MAX_REASONS distinct count as OTHER."""
        if entry.refused:
            self.not_sent += 1
        else:
            self.failed += 1
        reason = (entry.refused, reason_of(entry.error or ""))
        if reason not in self.reasons and len(self.reasons) >= MAX_REASONS:
            reason = (entry.refused, OTHER_REASONS)
        self.reasons[reason] += 1


def compact(entry: Entry) -> bytes | None:
    """A decided entry's bookmark in a fifth of the memory (MessagePack, a SHA-256 hash as its 32
    bytes); None when a value is not plain text, a whole number, true/false or null (kept as is).
    """
    outcome = entry.outcome
    fields = (entry.external_id, outcome.id, outcome.lookup_key, outcome.error, entry.batch_id)
    if entry.mapped_record is not None or not all(type(value) in PLAIN_VALUES for value in fields):
        return None
    digest = bytes.fromhex(entry.hash) if SHA256_HEX.fullmatch(entry.hash) else entry.hash
    error = None if outcome.success else outcome.error
    key = SUMMARY_KEYS.index(entry.summary_key)
    return _packer.encode((digest, outcome.success, *fields[:3], error, entry.batch_id, key))


def expand(item: Entry | bytes) -> Entry:
    """The entry a compacted one stands for (an entry passes through)."""
    if not isinstance(item, bytes):
        return item
    digest, success, external_id, cbx1_id, lookup_key, error, batch_id, key = _unpacker.decode(item)
    entry = Entry(digest.hex() if isinstance(digest, bytes) else digest, external_id)
    entry.id, entry.lookup_key, entry.error, entry.batch_id = cbx1_id, lookup_key, error, batch_id
    entry.existing = SUMMARY_KEYS[key] == "existing"
    entry.updated = SUMMARY_KEYS[key] == "updated"
    entry.success = success
    return entry


class StateLedger:
    """Entries per stream in this run's input order; identical records (same hash) share the first
    one's outcome.

    An earlier run of the job (its incremental state, `seed`) is taken in as a pool of outcomes: a
    record of this run that one of them confirmed takes that outcome at its own position and is not
    sent again; one it failed is sent again. Earlier outcomes no record of this run claims are kept,
    and come first in the state.

    Memory: the decided entries at the head of a stream (its decided prefix) are compacted every
    COMPACT_EVERY records, and counted as they are (the state's summary, and this run's Tally by
    outcome and failure reason); only the entries after the prefix (in flight, or decided out of
    order) are kept as objects. Identical records are found by the hash of their hash (verified on
    a match), so no 64-character key is kept per record.
    """

    def __init__(self) -> None:
        self._decisions: dict[str, collections.deque[Entry]] | None = None  # kept once journaled
        self._entries: dict[str, list[Entry | bytes]] = {}
        self._by_hash: dict[str, dict[int, Entry | bytes]] = {}
        self._seeded: dict[str, list[Entry]] = {}
        self._unclaimed: dict[str, dict[str, list[Entry]]] = {}
        self._superseded: dict[str, dict[str, Entry]] = {}  # stream -> failed hash -> later success
        # lookup key -> successes of an earlier run that no record of this run has claimed yet (a dict
        # as an ordered set) -> the stream of each
        self._unclaimed_successes: dict[str, dict[Entry, str]] = {}
        self._prefix: dict[str, int] = {}
        self._prefix_counts: dict[str, collections.Counter[str]] = {}
        self._prefix_failures: dict[str, Tally] = {}  # the prefix's failures; its other counts above
        self._compacting = threading.Lock()  # the prefix and its counts move together

    def seed(self, state: t.Mapping[str, t.Any]) -> int:
        """Take in the entries of an earlier run of the same job; returns how many were taken.

        A record that failed then is superseded when that run wrote its lookup key with a later
        record: later in the same stream's entries, or, in another stream (contacts and leads write
        the same CBX1 contacts), one this run's input has not reached yet. It is not sent again, so
        CBX1 never ends up holding older data than the state says.
        """
        count = 0
        for stream, bookmarks in state.get("bookmarks", {}).items():
            self.open_stream(stream)
            seeded = self._seeded.setdefault(stream, [])
            unclaimed = self._unclaimed.setdefault(stream, {})
            for bookmark in bookmarks:
                if isinstance(bookmark, dict) and "hash" in bookmark:
                    entry = Entry.from_bookmark(bookmark, unclaimed.get(str(bookmark["hash"]), [None])[0])
                    seeded.append(entry)
                    unclaimed.setdefault(entry.hash, []).append(entry)
                    if entry.outcome.success and entry.lookup_key is not None:
                        self._unclaimed_successes.setdefault(entry.lookup_key, {})[entry] = stream
                    count += 1
            self._superseded[stream] = superseded_failures(seeded)
        return count

    def open_stream(self, stream: str) -> None:
        """Make the stream appear in the state (with zero counts) even before its first record."""
        self._by_hash.setdefault(stream, {})
        self._prefix.setdefault(stream, 0)
        self._prefix_counts.setdefault(stream, collections.Counter())
        if stream not in self._prefix_failures:  # not setdefault: no Tally built for each record
            self._prefix_failures[stream] = Tally()
        self._entries.setdefault(stream, [])  # last: a stream listed here has all its parts
        if self._decisions is not None:
            self._decisions.setdefault(stream, collections.deque())

    def keep_decisions(self) -> None:
        """From now on, note each entry's decision, for `decided_since` (the incremental journal)."""
        self._decisions = {stream: collections.deque() for stream in self._entries}

    def decided_since(self) -> list[tuple[str, Entry]]:
        """(stream, entry) for each decision since the last call, in the order they were made."""
        taken = []
        for stream, decided in list((self._decisions or {}).items()):
            while decided:
                taken.append((stream, decided.popleft()))
        return taken

    def add(self, stream: str, record_hash: str, external_id: t.Any, *, alone: bool = False) -> Entry:
        """This run's entry for a record. It is to be sent only while it is undecided and has no
        `original` (an identical record earlier in this run): an entry an earlier run of the job
        decided (confirmed, or superseded) comes back decided. An entry `alone` (a record that cannot
        be sent) is never an identical repeat, nor takes an earlier outcome.
        """
        self.open_stream(stream)
        decisions = self._decisions[stream] if self._decisions is not None else None
        if alone:
            self._claim(stream, record_hash)
            entry = Entry(record_hash, external_id, decisions=decisions)
            self._entries[stream].append(entry)
            return entry
        claimed = self._claim(stream, record_hash)
        first = self._first(stream, record_hash)
        entry = Entry(record_hash, external_id, original=first, decisions=decisions)
        if first is None:
            self._by_hash[stream].setdefault(hash(record_hash), entry)
            newer = None
            if claimed is not None and claimed.outcome.success:
                entry.take_outcome(claimed)
            elif claimed is not None:
                newer = self._superseded[stream].get(record_hash) or self._later_elsewhere(stream, claimed)
            if newer is not None:
                entry.lookup_key = newer.lookup_key
                entry.refuse(
                    f"superseded: a later record with lookupKey {newer.lookup_key!r} (CRM id "
                    f"{newer.external_id}) was written by an earlier run of this job after this one "
                    "failed, so it is not sent again and CBX1 keeps the newer data"
                )
        entries = self._entries[stream]
        entries.append(entry)
        if len(entries) % COMPACT_EVERY == 0:
            self._advance(stream)
        return entry

    def _first(self, stream: str, record_hash: str) -> Entry | None:
        """This run's first entry for identical records (an equal hash), if any."""
        found = self._by_hash[stream].get(hash(record_hash))
        if found is None:
            return None
        first = expand(found)
        return first if first.hash == record_hash else None

    def _advance(self, stream: str) -> int:
        """Compact the entries decided since the prefix ended, up to the first undecided one;
        returns the prefix's new length.
        """
        with self._compacting:
            entries, index = self._entries[stream], self._by_hash[stream]
            counts, failures = self._prefix_counts[stream], self._prefix_failures[stream]
            count = self._prefix[stream]
            while count < len(entries):
                entry = entries[count]
                if isinstance(entry, Entry):
                    if entry.outcome.success is None:
                        break
                    key = entry.summary_key
                    counts[key] += 1
                    counts["failed" if entry.outcome.success is False else "written"] += 1
                    if key == "fail":
                        failures.count_failure(entry)
                    packed = compact(entry)
                    if packed is not None:
                        entries[count] = packed
                        if index.get(hash(entry.hash)) is entry:
                            index[hash(entry.hash)] = packed
                count += 1
            self._prefix[stream] = count
            return count

    def _claim(self, stream: str, record_hash: str) -> Entry | None:
        """An earlier run's entry for this record, no longer kept apart (None if there is none)."""
        unclaimed = self._unclaimed.get(stream)
        earlier = unclaimed.get(record_hash) if unclaimed else None
        if not earlier:
            return None
        entry = earlier.pop(0)
        entry.replaced = True
        if entry.outcome.success and entry.lookup_key is not None:
            successes = self._unclaimed_successes[entry.lookup_key]
            del successes[entry]
            if not successes:
                del self._unclaimed_successes[entry.lookup_key]
        return entry

    def _later_elsewhere(self, stream: str, failed: Entry) -> Entry | None:
        """For a record that failed in an earlier run: that run's success of its key in another
        stream that this run's input has not reached yet (so a later record), if any. This assumes
        the job reads its input again from the start, as a rerun of a HotGlue job does."""
        if failed.outcome.success is not False or failed.lookup_key is None:
            return None
        unclaimed = self._unclaimed_successes.get(failed.lookup_key, {})
        return next((entry for entry, other in reversed(unclaimed.items()) if other != stream), None)

    def streams(self) -> list[str]:
        return list(self._entries)

    def entries(self, stream: str) -> list[Entry]:
        """This run's entries of a stream (compacted ones expanded: for a summary at the end)."""
        return [expand(item) for item in self._entries[stream]]

    def count(self, stream: str) -> int:
        """How many records of the stream this run has read."""
        return len(self._entries[stream])

    def positions(self) -> dict[str, int]:
        """How many entries each stream has now."""
        return {stream: len(entries) for stream, entries in self._entries.items()}

    def decided_through(self, positions: t.Mapping[str, int]) -> bool:
        """Whether every entry before these positions has its outcome."""
        return all(self._advance(stream) >= count for stream, count in positions.items())

    def _window(self, stream: str) -> tuple[collections.Counter[str], list[Entry | bytes]]:
        """The counts of the decided prefix, and the entries after it, taken together."""
        with self._compacting:
            start = self._prefix[stream]
            return collections.Counter(self._prefix_counts[stream]), self._entries[stream][start:]

    def totals(self) -> tuple[int, int, int]:
        """(entries, succeeded, failed) of this run; entries still waiting are neither."""
        read = written = failed = 0
        for stream in list(self._entries):
            counts, window = self._window(stream)
            read += self._prefix[stream] + len(window)
            written += counts["written"]
            failed += counts["failed"]
            for item in window:
                success = expand(item).outcome.success
                written += success is True
                failed += success is False
        return read, written, failed

    def confirmed(self, stream: str) -> t.Iterator[Entry]:
        """What the state reports: earlier runs' entries no record of this run claimed, then every
        decided entry of this run in input order. An entry still waiting for its answer is left
        out (a stopped run's state may have gaps), so no entry claims what CBX1 did not confirm.
        """
        kept = (entry for entry in self._seeded.get(stream, []) if not entry.replaced)
        expanded = (expand(item) for item in self._entries[stream])
        decided = (entry for entry in expanded if entry.outcome.success is not None)
        return itertools.chain(kept, decided)

    def tally(self, stream: str) -> Tally:
        """This run's records of the stream by outcome and failure reason (for the run summary): the
        decided prefix's counts, and the entries after it counted now.
        """
        with self._compacting:
            start, entries, counts = self._prefix[stream], self._entries[stream], self._prefix_counts[stream]
            tally = replace(
                self._prefix_failures[stream],
                received=len(entries),
                succeeded=counts["success"] + counts["updated"],
                existing=counts["existing"],
                reasons=collections.Counter(self._prefix_failures[stream].reasons),
            )
            window = entries[start:]
        for item in window:
            entry = expand(item)
            if entry.outcome.success is not None:
                tally.count(entry)
        return tally

    def summary(self, stream: str) -> dict[str, int]:
        prefix, window = self._window(stream)
        counts = {key: prefix[key] for key in SUMMARY_KEYS}
        kept = (entry for entry in self._seeded.get(stream, []) if not entry.replaced)
        for entry in itertools.chain(kept, map(expand, window)):
            if entry.outcome.success is not None:
                counts[entry.summary_key] += 1
        return counts

    def write(self, out: SupportsWrite[str]) -> None:
        """Write the state as one bare JSON line; only confirmed outcomes are in it.

        The line goes out in pieces of about a megabyte: an unbuffered stdout (PYTHONUNBUFFERED)
        would otherwise cost a system call per entry, and memory stays flat however long the line.
        """
        streams = list(self._entries)  # a stream may open meanwhile (the file is saved from workers)
        pieces = ['{"bookmarks":{']
        size = 0
        for number, stream in enumerate(streams):
            pieces.append(("," if number else "") + encode_text(stream) + ":[")
            for position, entry in enumerate(self.confirmed(stream)):
                piece = ("," if position else "") + encode_text(entry.as_bookmark())
                pieces.append(piece)
                size += len(piece)
                if size > WRITE_PIECE_CHARS:
                    out.write("".join(pieces))
                    pieces, size = [], 0
            pieces.append("]")
        pieces.append('},"summary":')
        pieces.append(encode_text({stream: self.summary(stream) for stream in streams}))
        pieces.append("}\n")
        out.write("".join(pieces))


def superseded_failures(entries: t.Sequence[Entry]) -> dict[str, Entry]:
    """Failed entries (by hash) whose lookup key a later entry wrote: hash -> that later entry."""
    newest_success: dict[str, int] = {}
    for position, entry in enumerate(entries):
        if entry.outcome.success and entry.lookup_key is not None:
            newest_success[entry.lookup_key] = position
    superseded = {}
    for position, entry in enumerate(entries):
        key = entry.lookup_key
        if entry.outcome.success is False and key is not None and newest_success.get(key, -1) > position:
            superseded[entry.hash] = entries[newest_success[key]]
    return superseded
