"""Progress lines on stderr while a run goes on, and a summary table per stream at its end."""

from __future__ import annotations

import logging
import time
import typing as t

from target_cbx1.context import StreamStats

if t.TYPE_CHECKING:
    from target_cbx1.ledger import StateLedger

logger = logging.getLogger("target-cbx1.progress")


class Progress:
    """Logs a progress line every `interval` seconds (0: never) and the final table."""

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
        read, written, failed = self._ledger.totals()
        since, done_before = self._last
        rate = (written + failed - done_before) / max(now - since, 1e-9)
        self._last = (now, written + failed)
        logger.info(
            "Progress: %d records read, %d written, %d failed, %d waiting; %.0f records/s",
            read,
            written,
            failed,
            read - written - failed,
            rate,
        )

    def log_summary(self, stats: t.Mapping[str, StreamStats]) -> None:
        """One row per stream: sent, succeeded, failed, existing, requests, retries, duration, rate."""
        now = time.monotonic()
        header = (
            "stream",
            "sent",
            "succeeded",
            "failed",
            "existing",
            "requests",
            "retries",
            "seconds",
            "rec/s",
        )
        rows = [header]
        for stream in self._ledger.streams():
            summary = self._ledger.summary(stream)
            stream_stats = stats.get(stream) or StreamStats(started_at=self._started)
            seconds = now - stream_stats.started_at
            count = self._ledger.count(stream)
            rows.append(
                (
                    stream,
                    str(stream_stats.sent),
                    str(summary["success"] + summary["updated"]),
                    str(summary["fail"]),
                    str(summary["existing"]),
                    str(stream_stats.counts.requests),
                    str(stream_stats.counts.retries),
                    f"{seconds:.1f}",
                    f"{count / max(seconds, 1e-9):.0f}",
                )
            )
        widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
        logger.info("Summary per stream:")
        for row in rows:
            logger.info("  %s", "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
