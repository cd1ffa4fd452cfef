"""The state HotGlue reads: one entry per input record, in input order, and a summary per stream."""

from __future__ import annotations

import itertools
import typing as t

from target_cbx1.jsonio import encode_text

if t.TYPE_CHECKING:
    from _typeshed import SupportsWrite

SUMMARY_KEYS = ("success", "fail", "existing", "updated")


class Entry:
    """One record's outcome; pending (success is None) until the API or the target decides it."""

    __slots__ = (
        "batch_id",
        "error",
        "existing",
        "external_id",
        "hash",
        "id",
        "lookup_key",
        "mapped_record",
        "original",
        "replaced",
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
        self.existing = False
        self.batch_id: str | None = None
        self.mapped_record: dict[str, t.Any] | None = None
        self.replaced = False

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
        """CBX1 holds the record; `existing`: it already held the same data (SKIPPED), nothing was written."""
        self.success, self.id, self.updated, self.existing = True, cbx1_id, updated, existing

    def fail(self, error: str) -> None:
        self.success, self.error = False, error

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
        self._resumed: dict[str, dict[str, list[Entry]]] = {}
        self._prefix: dict[str, int] = {}

    def seed(self, state: t.Mapping[str, t.Any]) -> int:
        """Take in the entries of an earlier run of the same job; returns how many were taken."""
        count = 0
        for stream, bookmarks in state.get("bookmarks", {}).items():
            self.open_stream(stream)
            resumed = self._resumed.setdefault(stream, {})
            for bookmark in bookmarks:
                if not isinstance(bookmark, dict) or "hash" not in bookmark:
                    continue
                first = self._by_hash[stream].get(bookmark["hash"])
                entry = Entry.from_bookmark(bookmark, first)
                self._by_hash[stream].setdefault(entry.hash, entry)
                self._entries[stream].append(entry)
                resumed.setdefault(entry.hash, []).append(entry)
                count += 1
        return count

    def open_stream(self, stream: str) -> None:
        """Make the stream appear in the state (with zero counts) even before its first record."""
        self._entries.setdefault(stream, [])
        self._by_hash.setdefault(stream, {})

    def add(self, stream: str, record_hash: str, external_id: t.Any) -> Entry | None:
        """A new entry (`original` set when an identical record came before in this job).

        None when an earlier run of the job already wrote this record: it is not sent again. A record
        that failed then is tried again, and its new entry replaces the old ones.
        """
        self.open_stream(stream)
        earlier = self._resumed.get(stream, {}).pop(record_hash, None)
        if earlier is not None:
            if earlier[0].outcome.success:
                self._resumed[stream][record_hash] = earlier
                return None
            for entry in earlier:
                entry.replaced = True
            del self._by_hash[stream][record_hash]
        first = self._by_hash[stream].get(record_hash)
        entry = Entry(record_hash, external_id, original=first)
        if first is None:
            self._by_hash[stream][record_hash] = entry
        self._entries[stream].append(entry)
        return entry

    def streams(self) -> list[str]:
        return list(self._entries)

    def entries(self, stream: str) -> list[Entry]:
        return self._entries[stream]

    def positions(self) -> dict[str, int]:
        """How many entries each stream has now."""
        return {stream: len(entries) for stream, entries in self._entries.items()}

    def decided_through(self, positions: t.Mapping[str, int]) -> bool:
        """Whether every entry before these positions has its outcome."""
        return all(self._decided_prefix(stream) >= count for stream, count in positions.items())

    def _decided_prefix(self, stream: str) -> int:
        entries = self._entries[stream]
        count = self._prefix.get(stream, 0)
        while count < len(entries) and (
            entries[count].replaced or entries[count].outcome.success is not None
        ):
            count += 1
        self._prefix[stream] = count
        return count

    def totals(self) -> tuple[int, int, int]:
        """(entries, succeeded, failed) over all streams; entries still waiting are neither."""
        read = written = failed = 0
        for entries in self._entries.values():
            for entry in entries:
                read += 1
                success = entry.outcome.success
                if success:
                    written += 1
                elif success is not None:
                    failed += 1
        return read, written, failed

    def confirmed(self, stream: str) -> t.Iterator[Entry]:
        """The stream's entries up to the first whose outcome is still unknown, in input order.

        Nothing is reported ahead of a record whose request has not completed.
        """
        decided = itertools.islice(self._entries[stream], self._decided_prefix(stream))
        return (entry for entry in decided if not entry.replaced)

    def summary(self, stream: str) -> dict[str, int]:
        counts = dict.fromkeys(SUMMARY_KEYS, 0)
        for entry in self.confirmed(stream):
            counts[entry.summary_key] += 1
        return counts

    def write(self, out: SupportsWrite[str]) -> None:
        """Write the state as one bare JSON line, entry by entry; only confirmed outcomes are in it."""
        streams = list(self._entries)  # a stream may open meanwhile (the file is saved from workers)
        out.write('{"bookmarks":{')
        for number, stream in enumerate(streams):
            out.write(("," if number else "") + encode_text(stream) + ":[")
            for position, entry in enumerate(self.confirmed(stream)):
                out.write(("," if position else "") + encode_text(entry.as_bookmark()))
            out.write("]")
        out.write('},"summary":')
        out.write(encode_text({stream: self.summary(stream) for stream in streams}))
        out.write("}\n")
