"""BatchSink (chunks to /bulk, results matched by lookupKey) and RecordSink (one /upsert per record)."""

from __future__ import annotations

import time
import typing as t
from functools import partial

from singer_sdk import sinks as sdk_sinks

from target_cbx1.client import ApiSink, Pending
from target_cbx1.errors import RejectedError, RequestFailedError
from target_cbx1.models import BulkData, BulkResult
from target_cbx1.records import RecordRejectedError

if t.TYPE_CHECKING:
    from collections.abc import Iterator

# Rejections of a whole /bulk request that one bad record can cause: its records are then sent alone.
ISOLATED_STATUSES = frozenset({400, 422})


def chunks_with_distinct_keys(queue: list[Pending], size: int) -> Iterator[list[Pending]]:
    """Input-order chunks of at most `size` records in which no lookup key appears twice."""
    chunk: list[Pending] = []
    keys: set[str] = set()
    for pending in queue:
        if len(chunk) == size or pending.key in keys:
            yield chunk
            chunk, keys = [], set()
        chunk.append(pending)
        keys.add(pending.key)
    if chunk:
        yield chunk


class BatchSink(ApiSink, sdk_sinks.BatchSink):
    """Sends records in chunks of `batch_size` to /bulk and matches results by lookup key."""

    endpoint = "bulk"

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue: list[Pending] = []

    @property
    def max_size(self) -> int:
        return self.cbx1.settings.batch_size

    @property
    def current_size(self) -> int:
        return len(self._queue)

    def enqueue(self, pending: Pending) -> None:
        self._queue.append(pending)

    def process_batch(self, context: dict) -> None:
        """Hand everything queued to the request pool, chunk by chunk in input order."""
        queue, self._queue = self._queue, []
        for chunk in chunks_with_distinct_keys(queue, self.max_size):
            self.dispatch(chunk, self.path, partial(self._send_chunk, chunk))

    def _send_chunk(self, chunk: list[Pending]) -> None:
        started = time.monotonic()
        answer = self.exchange(chunk, BulkData, self.path, [pending.payload for pending in chunk])
        if answer is None:
            return
        by_key = self._results_by_key(answer.results)
        for pending in chunk:
            result = by_key.pop(pending.key, None)
            if result is None:
                pending.entry.fail(
                    f"no result returned for lookupKey {pending.key!r}: CBX1 answered the request "
                    "but said nothing about this record"
                )
            elif result.success:
                pending.entry.succeed(result.id, updated=result.updated)
            else:
                pending.entry.fail(f"CBX1 rejected the record: {result.error or '(no reason given)'}")
        if by_key:
            self.logger.warning("CBX1 returned results for keys not sent: %s", sorted(by_key))
        failed = sum(not pending.entry.success for pending in chunk)
        self.finish_request(self.path, len(chunk), started, failed)

    def request_failed(
        self, batch: list[Pending], path: str, started: float, exc: RequestFailedError
    ) -> None:
        """A /bulk request rejected as a whole is split: each record goes alone to /upsert."""
        if not (isinstance(exc, RejectedError) and exc.status in ISOLATED_STATUSES and len(batch) > 1):
            super().request_failed(batch, path, started, exc)
            return
        self.logger.warning(
            "%s: %s; sending its %d records one by one to /upsert so that only the bad ones fail",
            path,
            exc,
            len(batch),
        )
        for pending in batch:
            self.upsert_one(pending, self.upsert_path)

    def _results_by_key(self, results: list[BulkResult]) -> dict[str, BulkResult]:
        """Results keyed by their normalised lookupKey, as the records were."""
        by_key: dict[str, BulkResult] = {}
        for result in results:
            if result.lookup_key is None or self.lookup is None:
                continue
            try:
                by_key[self.lookup.key_of(result.lookup_key)] = result
            except RecordRejectedError:
                by_key[result.lookup_key] = result
        return by_key


class RecordSink(ApiSink, sdk_sinks.RecordSink):
    """Sends each record on its own to /upsert."""

    endpoint = "upsert"

    def enqueue(self, pending: Pending) -> None:
        self.dispatch([pending], self.path, partial(self.upsert_one, pending, self.path))
