"""dry_run: every record read, checked and prepared; bodies shown on stderr; nothing sent."""

from __future__ import annotations

import collections
import sys
import typing as t

from target_cbx1 import jsonio

if t.TYPE_CHECKING:
    from target_cbx1.ledger import Entry, StateLedger

SHOWN_BODIES = 3
NOT_SENT = "dry run: the record passed every check and was prepared, but not sent"


class DryRun:
    """Takes the requests a real run would send, shows the first few, and fails their records."""

    def __init__(self) -> None:
        self.requests: collections.Counter[str] = collections.Counter()
        self.records: collections.Counter[str] = collections.Counter()
        self._shown = 0

    def take(self, stream: str, path: str, body: t.Any, entries: list[Entry]) -> None:
        """A request a real run would send now: count it, maybe show it, and fail its records."""
        self.requests[stream] += 1
        self.records[stream] += len(entries)
        if self._shown < SHOWN_BODIES:
            self._shown += 1
            sys.stderr.write(
                f"Dry run: POST {path} would send {len(entries)} records:\n{jsonio.pretty(body)}\n"
            )
        for entry in entries:
            entry.fail(NOT_SENT)

    def print_summary(self, ledger: StateLedger) -> None:
        """One paragraph per stream: what would have been sent, and why the rest would not."""
        sys.stderr.write("Dry run summary (no request was made):\n")
        for stream in ledger.streams():
            reasons = collections.Counter(
                entry.error for entry in ledger.entries(stream) if entry.error and entry.error != NOT_SENT
            )
            sys.stderr.write(
                f"  {stream}: {len(ledger.entries(stream))} records read, {self.records[stream]} would be "
                f"sent in {self.requests[stream]} request(s), {sum(reasons.values())} failed the checks\n"
            )
            for reason, count in reasons.most_common():
                sys.stderr.write(f"    {count} x {reason}\n")
        sys.stderr.flush()
