"""RunContext: what the target hands each sink (settings, session, ledger, routing)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import typing as t
from dataclasses import dataclass, field

from target_cbx1.pipeline import RunRequests
from target_cbx1.session import RequestCounts

if t.TYPE_CHECKING:
    from collections.abc import Callable

    from target_cbx1.dryrun import DryRun
    from target_cbx1.ledger import StateLedger
    from target_cbx1.session import ApiSession
    from target_cbx1.settings import Settings
    from target_cbx1.streams import StreamRouter


class KeyQueue(t.Protocol):
    """A sink that keeps records queued; `send_queue` hands all of them to its request pool now."""

    def send_queue(self) -> None: ...


@dataclass
class StreamStats:
    """What a stream sent: records, requests and retries, and since when (for the summary table)."""

    sent: int = 0
    repaired: int = 0  # text values repair_text fixed
    counts: RequestCounts = field(default_factory=RequestCounts)
    started_at: float = field(default_factory=time.monotonic)


def batch_id(stream: str, index: int) -> str:
    """HotGlue's hgBatchId: md5 hex of JOB_ROOT:stream:index."""
    job_root = os.environ.get("JOB_ROOT", "job_Example")
    return hashlib.md5(f"{job_root}:{stream}:{index}".encode()).hexdigest()


class RunContext:
    """One run's shared parts; `checkpoint` is called after every request that completed."""

    def __init__(
        self,
        settings: Settings,
        session: ApiSession,
        ledger: StateLedger,
        router: StreamRouter,
        dry_run: DryRun | None,
        checkpoint: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.session = session
        self.ledger = ledger
        self.router = router
        self.dry_run = dry_run
        self.checkpoint = checkpoint
        self.output_mapped_record = os.environ.get("OUTPUT_MAPPED_RECORD", "").lower() == "true"
        self.requests = RunRequests(lambda: session.stop_signal, session.stop)
        self.missing_endpoints: dict[str, str] = {}  # path -> why nothing more is sent there (404/405)
        # lookup key -> the sink whose queue holds the key's latest record not yet handed to a pool
        self.queued_keys: dict[str, KeyQueue] = {}
        self._stats: dict[str, StreamStats] = {}
        self._chunks: dict[str, int] = {}
        self._lock = threading.Lock()

    def stats(self, stream: str) -> StreamStats:
        """The stream's counters, kept for the whole run (a schema change does not reset them)."""
        with self._lock:
            return self._stats.setdefault(stream, StreamStats())

    def all_stats(self) -> dict[str, StreamStats]:
        with self._lock:
            return dict(self._stats)

    def next_batch_id(self, stream: str) -> str | None:
        """The hgBatchId of the stream's next request, when inject_batch_ids is on."""
        if not self.settings.inject_batch_ids:
            return None
        with self._lock:
            self._chunks[stream] = self._chunks.get(stream, 0) + 1
            return batch_id(stream, self._chunks[stream])


@t.runtime_checkable
class HasRunContext(t.Protocol):
    """A target that hands its sinks a RunContext."""

    run_context: RunContext
