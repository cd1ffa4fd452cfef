"""Progress lines on stderr while a run goes on, and a summary per stream at its end."""

from __future__ import annotations

import logging
import time
import typing as t

from target_cbx1.context import StreamStats
from target_cbx1.ledger import OTHER_REASONS

if t.TYPE_CHECKING:
    from target_cbx1.ledger import StateLedger, Tally

logger = logging.getLogger("target-cbx1.progress")
SHOWN_REASONS = 5  # the most frequent failure reasons shown per stream, with every not-sent one
COLUMNS = (
    "stream",
    "received",
    "sent",
    "succeeded",
    "existing",
    "failed",
    "not sent",
    "undecided",
    "requests",
    "retries",
    "seconds",
    "rec/s",
)
SUMMARY_TITLE = "Summary per stream (received = succeeded + existing + failed + not sent + undecided):"
REASONS_TITLE = (
    "Failure reasons per stream (not sent: refused by the target's checks; failed: by CBX1 or the network):"
)


class Progress:
    """Logs a progress line every `interval` seconds (0: never) and the summary at the end."""

    def __init__(self, interval: float, ledger: StateLedger) -> None:
        self._interval = interval
        self._ledger = ledger
        self._started = time.monotonic()
        self._next_at = self._started + interval
        self._last = (self._started, 0)

    def tick(self) -> None:
        """Called for each record read; logs when the interval has passed."""
        if not self._interval:
            return
        now = time.monotonic()
        if now < self._next_at:
            return
        self._next_at = now + self._interval
        read, confirmed, failed = self._ledger.totals()
        since, done_before = self._last
        rate = (confirmed + failed - done_before) / max(now - since, 1e-9)
        self._last = (now, confirmed + failed)
        logger.info(
            "Progress: %d records read, %d confirmed, %d failed, %d in flight; %.0f records/s",
            read,
            confirmed,
            failed,
            read - confirmed - failed,
            rate,
        )

    def log_summary(self, stats: t.Mapping[str, StreamStats]) -> None:
        """A table row per stream, then its failure reasons, one INFO line each."""
        now = time.monotonic()
        tallies = {stream: self._ledger.tally(stream) for stream in self._ledger.streams()}
        rows: list[tuple[str, ...]] = [COLUMNS]
        for stream, tally in tallies.items():
            stream_stats = stats.get(stream) or StreamStats(started_at=self._started)
            seconds = now - stream_stats.started_at
            numbers = (
                tally.received,
                stream_stats.sent,
                tally.succeeded,
                tally.existing,
                tally.failed,
                tally.not_sent,
                tally.undecided,
                stream_stats.counts.requests,
                stream_stats.counts.retries,
            )
            rate = tally.received / max(seconds, 1e-9)
            rows.append((stream, *map(str, numbers), f"{seconds:.1f}", f"{rate:.0f}"))
        widths = [max(len(row[column]) for row in rows) for column in range(len(COLUMNS))]
        logger.info("%s", SUMMARY_TITLE)
        for row in rows:
            logger.info("  %s", "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
        if any(tally.reasons for tally in tallies.values()):
            logger.info("%s", REASONS_TITLE)
            for stream, tally in tallies.items():
                log_reasons(stream, tally)


def log_reasons(stream: str, tally: Tally) -> None:
    """The stream's failures by reason, most frequent first: the SHOWN_REASONS most frequent, and
    every reason the target's checks refused records for; the rest as "other reasons".
    """
    named = [(reason, count) for reason, count in tally.reasons.most_common() if reason[1] != OTHER_REASONS]
    shown = [
        (reason, count) for rank, (reason, count) in enumerate(named) if rank < SHOWN_REASONS or reason[0]
    ]
    for (not_sent, reason), count in shown:
        logger.info("  %s: %d x %s: %s", stream, count, "not sent" if not_sent else "failed", reason)
    others = tally.failed + tally.not_sent - sum(count for _, count in shown)
    if others:
        logger.info("  %s: %d x other reasons", stream, others)
