"""The state HotGlue reads: one entry per input record, in input order, and a summary per stream."""

from __future__ import annotations

import typing as t

from singer_sdk.singerlib.json import serialize_json

SUMMARY_KEYS = ("success", "fail", "existing", "updated")


class Entry:
    """One record's outcome; pending (success is None) until the API or the target decides it."""

    __slots__ = (
        "batch_id",
        "error",
        "external_id",
        "hash",
        "id",
        "lookup_key",
        "mapped_record",
        "original",
        "success",
        "updated",
    )

    def __init__(self, record_hash: str, external_id: t.Any, original: Entry | None = None) -> None:
        self.hash = record_hash
        self.external_id = external_id
        self.original = original
        self.lookup_key: str | None = None
        self.success: bool | None = None
        self.id: str | None = None
        self.error: str | None = None
        self.updated = False
        self.batch_id: str | None = None
        self.mapped_record: dict[str, t.Any] | None = None

    def succeed(self, cbx1_id: str | None, *, updated: bool = False) -> None:
        self.success, self.id, self.updated = True, cbx1_id, updated

    def fail(self, error: str) -> None:
        self.success, self.error = False, error

    @property
    def outcome(self) -> Entry:
        """The entry whose result this one reports: the first of identical records."""
        return self.original or self

    @property
    def decided(self) -> bool:
        return self.outcome.success is not None

    @property
    def summary_key(self) -> str:
        if self.original is not None:
            return "existing"
        if not self.success:
            return "fail"
        return "updated" if self.updated else "success"

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


class StateLedger:
    """Entries per stream in input order; identical records (same hash) share the first one's outcome."""

    def __init__(self) -> None:
        self._entries: dict[str, list[Entry]] = {}
        self._by_hash: dict[str, dict[str, Entry]] = {}

    def open_stream(self, stream: str) -> None:
        """Make the stream appear in the state (with zero counts) even before its first record."""
        self._entries.setdefault(stream, [])
        self._by_hash.setdefault(stream, {})

    def add(self, stream: str, record_hash: str, external_id: t.Any) -> Entry:
        """A new entry; `entry.original` is set when an identical record was seen before."""
        self.open_stream(stream)
        first = self._by_hash[stream].get(record_hash)
        entry = Entry(record_hash, external_id, original=first)
        if first is None:
            self._by_hash[stream][record_hash] = entry
        self._entries[stream].append(entry)
        return entry

    def summary(self, stream: str) -> dict[str, int]:
        counts = dict.fromkeys(SUMMARY_KEYS, 0)
        for entry in self._entries[stream]:
            if entry.decided:
                counts[entry.summary_key] += 1
        return counts

    def write(self, out: t.TextIO) -> None:
        """Write the state as one bare JSON line, entry by entry; undecided entries are left out."""
        out.write('{"bookmarks":{')
        for number, (stream, entries) in enumerate(self._entries.items()):
            out.write(("," if number else "") + serialize_json(stream) + ":[")
            decided = (entry for entry in entries if entry.decided)
            for position, entry in enumerate(decided):
                out.write(("," if position else "") + serialize_json(entry.as_bookmark()))
            out.write("]")
        out.write('},"summary":')
        out.write(serialize_json({stream: self.summary(stream) for stream in self._entries}))
        out.write("}\n")
