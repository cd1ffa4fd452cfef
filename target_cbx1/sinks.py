"""BatchSink (chunks of batch_size, results matched by lookupKey) and RecordSink (one record a request)."""

from __future__ import annotations

import time
import typing as t
from dataclasses import dataclass
from functools import partial

from singer_sdk import sinks as sdk_sinks

from target_cbx1.client import ApiSink, Pending, repeated_miss
from target_cbx1.contracts.base import Outcome
from target_cbx1.errors import ApiOutageError, RejectedError, RequestFailedError


@dataclass
class _Chunk:
    """A chunk being filled: its records and the bytes of its body so far."""

    records: list[Pending]
    size: int


class BatchSink(ApiSink, sdk_sinks.BatchSink):
    """Sends records in chunks through the stream's contract, HotGlue's three-function way:
    `process_batch` hands the chunks to the request pool, and each chunk runs `make_batch_request`,
    `handle_batch_response`, then `update_state` for each of its records.
    """

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue: list[Pending] = []
        self._kept = 0  # records a partial batch left queued (waiting keys, chunks not yet full)
        self._waiting_since: float | None = None  # when the oldest queued record came

    @property
    def max_size(self) -> int:
        return self.settings.batch_size

    @property
    def current_size(self) -> int:
        return len(self._queue)

    @property
    def is_full(self) -> bool:
        """A chunk's worth of records came since the last batch: time for a partial one."""
        return len(self._queue) - self._kept >= self.max_size

    def enqueue(self, pending: Pending) -> None:
        """Queue the record. If an earlier record of its key waits in another stream's queue (contacts
        and leads write the same CBX1 contacts), that queue goes first, so the key's upserts keep
        their input order across streams too."""
        queued = self.run.queued_keys
        holder = queued.get(pending.key)
        if holder is not None and holder is not self:
            holder.send_queue()
        queued[pending.key] = self
        if not self._queue:
            self._waiting_since = time.monotonic()
        self._queue.append(pending)

    def send_queue(self) -> None:
        """Hand every queued record to the request pool now, as at the end of the input."""
        self.process_batch({})

    def waited_longer_than(self, seconds: float, now: float) -> bool:
        """Whether queued records have waited `seconds` for their chunk to fill."""
        return self._waiting_since is not None and now - self._waiting_since >= seconds

    def process_batch(self, context: dict) -> None:
        """Orchestrate the batch: cut what is queued into chunks and hand each to the request pool,
        where `process_chunk` posts it (make_batch_request), reads CBX1's answer
        (handle_batch_response) and records each record's state (update_state). The pool runs up to
        max_concurrency chunks at once while the target reads on.

        With `context["partial"]` (the queue is full while input goes on), only full chunks go, and a
        record whose lookup key is in flight stays queued on its own, so it neither splits nor holds
        up the chunks behind it. Otherwise (the end of the input, a schema change, a STATE) every
        record goes, in as many rounds as repeated keys need.
        """
        partial_batch = bool(context.get("partial"))
        queue, self._queue = self._queue, []
        sent: list[Pending] = []
        while queue:
            ready, queue = self.plan(queue, partial_batch=partial_batch)
            for chunk in ready:
                self.dispatch(chunk, partial(self.process_chunk, chunk))
                sent += chunk
            if partial_batch:
                break
        self._queue, self._kept = queue, len(queue)
        if not queue:
            self._waiting_since = None
        self._forget_sent_keys(sent)

    def _forget_sent_keys(self, sent: list[Pending]) -> None:
        """Keys of which this queue holds no record any more are no longer queued here."""
        queued, kept = self.run.queued_keys, {pending.key for pending in self._queue}
        for pending in sent:
            if pending.key not in kept and queued.get(pending.key) is self:
                del queued[pending.key]

    def plan(self, queue: list[Pending], *, partial_batch: bool) -> tuple[list[list[Pending]], list[Pending]]:
        """(chunks to send now, records to keep queued, in input order) from a queue.

        Chunks hold at most batch_size records, each for one path (one source and object type),
        with no lookup key twice, within max_request_bytes when it is set; one chunk is open per
        path, so interleaved sources still fill theirs. A record whose key is already in this plan,
        or (in a partial batch) in flight, waits for a later round, and so do the later records of
        its key: the upserts of a key leave in input order.
        """
        limit, size = self.settings.max_request_bytes, self.max_size
        empty = self.wrapping_bytes if limit is not None and queue else 0  # the body without records
        in_flight = self.run.requests.keys if partial_batch else frozenset()
        open_chunks: dict[str, _Chunk] = {}
        ready: list[list[Pending]] = []
        taken: set[str] = set()  # keys placed, or waiting, in this plan
        for pending in queue:
            if pending.key in taken or pending.key in in_flight:
                taken.add(pending.key)
                continue
            chunk = open_chunks.get(pending.path)
            if chunk is not None and (
                len(chunk.records) == size or (limit is not None and chunk.size + 1 + pending.size > limit)
            ):
                ready.append(chunk.records)
                chunk = None
            if chunk is None:
                chunk = open_chunks[pending.path] = _Chunk([], empty - 1)
            chunk.records.append(pending)
            chunk.size += 1 + pending.size  # a comma before each record but the first
            taken.add(pending.key)
        ready += [
            chunk.records for chunk in open_chunks.values() if not partial_batch or len(chunk.records) == size
        ]
        if sum(len(chunk) for chunk in ready) == len(queue):
            return ready, []
        sent = {id(pending) for chunk in ready for pending in chunk}
        return ready, [pending for pending in queue if id(pending) not in sent]

    def make_batch_request(self, records: list[dict]) -> dict:
        """POST one chunk of prepared records through the stream's contract; CBX1's whole answer.

        Raises RequestFailedError when the request as a whole failed.
        """
        return self.post(self.contract.batch_path(records[0]), self.contract.batch_body(records))

    def handle_batch_response(self, response: dict, raw_records: list[dict]) -> dict:
        """Each record's state from CBX1's answer, matched by lookupKey, never by position.

        Returns {"state_updates": [state, ...]} in the order of raw_records; each state has success,
        id, externalId, lookupKey and, for a failure, error (and `unanswered` when the answer had no
        result for the record). An unreadable answer fails them all.
        """
        path = self.contract.batch_path(raw_records[0])
        keys = [self.route.payload_key(record) for record in raw_records]
        try:
            outcomes = self.contract.batch_outcomes(path, response.get("data"), keys)
        except RequestFailedError as exc:
            outcomes = [Outcome(False, error=str(exc))] * len(raw_records)
        states = [
            self.state_of(record, key, outcome)
            for record, key, outcome in zip(raw_records, keys, outcomes, strict=True)
        ]
        return {"state_updates": states}

    def process_chunk(self, chunk: list[Pending], *, again: bool = False) -> None:
        """One chunk's request: make_batch_request, handle_batch_response, update_state per record.

        The records CBX1's answer says nothing about are sent once more (`again`), in a request of
        their own while their keys are still held (an upsert is safe to repeat); only then they fail.
        """
        records = [pending.payload for pending in chunk]
        path = chunk[0].path
        started = time.monotonic()
        try:
            response = self.make_batch_request(records)
        except ApiOutageError as exc:
            if exc.request_error is not None:  # this request was tried; others never were
                self.fail_all(chunk, path, started, exc.request_error)
            raise
        except RequestFailedError as exc:
            keys = [pending.key for pending in chunk]
            if isinstance(exc, RejectedError) and self.contract.isolates(path, exc, keys):
                self._isolate(chunk, path, exc)
            else:
                self.fail_all(chunk, path, started, str(exc), quiet=repeated_miss(exc))
            return
        states = self.handle_batch_response(response, records)["state_updates"]
        resend, failed = [], 0
        for pending, state in zip(chunk, states, strict=True):
            if state.get("unanswered") and not again:
                resend.append(pending)
                continue
            self.update_state(state, pending.entry)
            failed += not state["success"]
        self.finish_request(path, len(chunk) - len(resend), started, failed)
        if resend:
            self.logger.warning(
                "%s: CBX1's answer had no result for %d records; sending them once more", path, len(resend)
            )
            self.process_chunk(resend, again=True)

    def _isolate(self, chunk: list[Pending], path: str, exc: RejectedError) -> None:
        """A chunk rejected as a whole for one bad record: each record goes alone, so only that one fails."""
        self.logger.warning(
            "%s: %s; sending its %d records one by one so that only the bad ones fail", path, exc, len(chunk)
        )
        for pending in chunk:
            self.write_alone(pending)


class RecordSink(ApiSink, sdk_sinks.RecordSink):
    """Sends each record on its own with HotGlue's record hook, `upsert_record`."""

    sends_alone = True

    def enqueue(self, pending: Pending) -> None:
        self.dispatch([pending], partial(self.write_alone, pending))
