"""ApiSink, the base of BatchSink and RecordSink: records in, payloads out through the stream's contract."""

from __future__ import annotations

import abc
import contextlib
import functools
import hashlib
import logging
import time
import typing as t
from dataclasses import dataclass

from singer_sdk.exceptions import InvalidRecord, MissingKeyPropertiesError
from singer_sdk.sinks import Sink

from target_cbx1 import jsonio
from target_cbx1.context import HasRunContext
from target_cbx1.contracts.base import Outcome
from target_cbx1.errors import ApiOutageError, EndpointMissingError, RejectedError, RequestFailedError
from target_cbx1.pipeline import RequestPool
from target_cbx1.records import RecordRejectedError, record_hash
from target_cbx1.repair import map_texts, without_mojibake
from target_cbx1.validation import CompiledValidator

if t.TYPE_CHECKING:
    from singer_sdk.target_base import Target

    from target_cbx1.contracts.base import Contract, Payload
    from target_cbx1.ledger import Entry

State = dict[str, t.Any]
MISSING_ENDPOINT_STATUSES = frozenset({404, 405})  # a wrong URL: no record of the stream can fix it
# What hgBatchId adds to a payload's JSON: ,"hgBatchId":"<32 hex digits>"
BATCH_ID_BYTES = len(jsonio.encode({"hgBatchId": "0" * 32})) - 1


def repeated_miss(exc: RequestFailedError) -> bool:
    return isinstance(exc, EndpointMissingError) and exc.repeated


def missing_endpoint(url: str, exc: RejectedError, stream: str) -> str:
    """Why a stream whose endpoint CBX1 does not have sends nothing more, and what to check."""
    return (
        f"CBX1 has no endpoint {url} (HTTP {exc.status}: {exc.server_message}), so stream {stream!r} "
        "sends nothing more: check that api_url is the API's base address (https://host, with no path "
        f"below it) and that {stream!r} is a stream CBX1 knows (a stream map can rename it)"
    )


@dataclass
class Pending:
    """A prepared record waiting for its request: `path` is the path of the chunk it can join (the
    records of one chunk share it), `size` the bytes of its JSON (0 when max_request_bytes is off).
    """

    entry: Entry
    key: str
    payload: Payload
    path: str
    size: int = 0


class ApiSink(Sink):
    """Base of BatchSink and RecordSink: gives each record its state entry, prepares it by its stream's
    route, sends it through the route's contract, and records each outcome with `update_state`.
    """

    sends_alone: t.ClassVar[bool] = False  # every record in the contract's single-record form

    def __init__(
        self,
        target: Target,
        stream_name: str,
        schema: dict,
        key_properties: t.Sequence[str] | None,
    ) -> None:
        super().__init__(target, stream_name, schema, key_properties)
        if not isinstance(target, HasRunContext):
            raise TypeError(f"{type(self).__name__} needs a target that hands it a run context")
        self.run = target.run_context
        self.settings = self.run.settings
        self.route = self.run.router.route(stream_name, schema, self.key_properties)
        self.stats = self.run.stats(stream_name)
        self.requests = RequestPool(self.settings.max_concurrency, f"cbx1-{stream_name}", self.run.requests)
        self.run.ledger.open_stream(stream_name)

    @property
    def contract(self) -> Contract:
        return self.route.contract

    @property
    def batch_processing_timer(self) -> t.Any:
        """No SDK batch timer: it would time only the hand-off to the request pool.

        Each request logs its own duration instead.
        """
        return contextlib.nullcontext()

    def get_validator(self) -> CompiledValidator | None:
        """A compiled schema check (fast); None when validate_records is off."""
        return CompiledValidator(self.schema) if self.validate_schema else None

    def _singer_validate_message(self, record: dict) -> None:
        """Stop the run on a record without a key property: the tap breaks the Singer spec."""
        missing = [key for key in self.key_properties if key not in record]
        if missing:
            raise MissingKeyPropertiesError(
                f"A record for stream {self.stream_name!r} is missing the key properties {missing} "
                f"(key_properties: {list(self.key_properties)}). Singer requires every record to carry "
                "its stream's key properties; check the tap."
            )

    def clean_up(self) -> None:
        """The stream is done: wait for its requests (raising what stopped one), then end its threads."""
        self.requests.wait()
        self.requests.close()
        super().clean_up()

    # Records in

    def process_record(self, record: dict, context: dict) -> None:
        """A record given directly is accepted as received."""
        self.accept(record, record)

    def accept(self, received: dict, record: dict) -> None:
        """Give the record its state entry, then queue or send it, or refuse it with the reason."""
        self._singer_validate_message(record)
        self.tally_record_read()
        self.record_counter_metric.increment()
        entry = self.run.ledger.add(self.stream_name, record_hash(received), self.route.external_id(record))
        if entry.success is not None or entry.original is not None:
            return  # decided by an earlier run of this job, or identical to an earlier record
        try:
            if self.settings.repair_text:
                record, count = map_texts(record, without_mojibake)
                self.stats.repaired += count
            if self._validator is not None:
                self._validator.validate(record)
            key, payload = self.route.prepare(record)
            pending = Pending(entry, key, payload, self.contract.batch_path(payload))
            self._measure(pending)
        except InvalidRecord as exc:
            entry.refuse(f"record does not match the schema of stream {self.stream_name!r}: {exc}")
            return
        except RecordRejectedError as exc:
            entry.lookup_key = exc.lookup_key
            entry.refuse(str(exc))
            return
        except RecursionError:
            entry.refuse(
                "the record is nested too deeply to prepare, so it was not sent; fix the tap or the ETL"
            )
            return
        entry.lookup_key = key
        self.enqueue(pending)

    def _measure(self, pending: Pending) -> None:
        """With max_request_bytes: note the record's size; a record no request can carry is refused."""
        limit = self.settings.max_request_bytes
        if limit is None:
            return
        pending.size = len(jsonio.encode(pending.payload))
        if self.settings.inject_batch_ids:
            pending.size += BATCH_ID_BYTES
        alone = self.wrapping_bytes + pending.size
        if alone > limit:
            raise RecordRejectedError(
                f"the record is too large to send: its request body would be {alone} bytes, over "
                f"max_request_bytes ({limit}); shorten its fields or raise the limit",
                pending.key,
            )

    @functools.cached_property
    def wrapping_bytes(self) -> int:
        """What the request body adds around one record's JSON ("[" and "]" for /bulk, none for /upsert)."""
        return len(jsonio.encode(self.request_body([{}]))) - len(b"{}")

    def request_body(self, payloads: list[Payload]) -> t.Any:
        """The JSON-ready body of the request that carries these records, in this sink's form."""
        return (
            self.contract.single_body(payloads[0]) if self.sends_alone else self.contract.batch_body(payloads)
        )

    def refuse(self, received: t.Any, error: str, line: bytes) -> None:
        """A record that cannot be sent as it came (not an object, NaN, nested too deeply): it fails,
        entered by the hash of its input line and never merged with another record.
        """
        self.tally_record_read()
        external_id = self.route.external_id(received) if isinstance(received, dict) else None
        entry = self.run.ledger.add(
            self.stream_name, hashlib.sha256(line).hexdigest(), external_id, alone=True
        )
        if entry.success is None:
            entry.refuse(error)

    @abc.abstractmethod
    def enqueue(self, pending: Pending) -> None:
        """Send the record now, or keep it for the next request."""

    # Requests out

    def dispatch(self, batch: list[Pending], work: t.Callable[[], None]) -> None:
        """Hand a new request to the pool (in a dry run, to the dry run instead)."""
        self.stamp(batch)
        self.stats.sent += len(batch)
        dry_run = self.run.dry_run
        if dry_run is not None:
            first = batch[0].payload
            path = self.contract.single_path(first) if self.sends_alone else batch[0].path
            body = self.request_body([pending.payload for pending in batch])
            dry_run.take(self.stream_name, path, body, [pending.entry for pending in batch])
            return
        # Keys are not told apart by stream: one key waiting for another stream's request costs a
        # little time, never a wrong order (contacts and leads write the same CBX1 contacts).
        self.requests.submit(frozenset(pending.key for pending in batch), work)

    def stamp(self, batch: list[Pending]) -> None:
        """Give a new request's records their batch id and mapped record, when asked for."""
        chunk_batch_id = self.run.next_batch_id(self.stream_name)
        for pending in batch:
            if chunk_batch_id is not None:
                pending.payload["hgBatchId"] = chunk_batch_id
                pending.entry.batch_id = chunk_batch_id
            if self.run.output_mapped_record:
                pending.entry.mapped_record = pending.payload

    def post(self, path: str, body: t.Any) -> dict[str, t.Any]:
        """POST a body through the session; CBX1's whole answer once it is a CM000 envelope.

        Raises RequestFailedError (the request's records fail) or an error that stops the run. After
        a 404 or 405 the stream's endpoint is missing: nothing more of the stream is sent, and its
        requests fail at once with the message that names the URL.
        """
        missing = self.run.missing_endpoints.get(path)
        if missing is not None:
            raise EndpointMissingError(missing, repeated=True)
        try:
            return self.run.session.post(path, jsonio.encode(body), self.stats.counts)
        except RejectedError as exc:
            if exc.status not in MISSING_ENDPOINT_STATUSES:
                raise
            message = missing_endpoint(self.run.session.url(path), exc, self.stream_name)
            self.run.missing_endpoints.setdefault(path, message)
            raise EndpointMissingError(message, repeated=False) from None

    def upsert_record(self, record: Payload, context: dict) -> tuple[str | None, bool, State]:
        """HotGlue's record hook: send one prepared record in the contract's single-record form.

        Returns (CBX1 id, success, state). RecordSink sends every record this way; BatchSink the
        records of a chunk CBX1 rejected as a whole. Raises only errors that stop the run.
        """
        path = self.contract.single_path(record)
        key = self.route.payload_key(record)
        started = time.monotonic()
        try:
            answer = self.post(path, self.contract.single_body(record))
            outcome = self.contract.single_outcome(path, answer.get("data"), key)
        except RequestFailedError as exc:
            self.finish_request(path, 1, started, 1, str(exc), quiet=repeated_miss(exc))
            outcome = Outcome(False, error=str(exc))
        else:
            self.finish_request(path, 1, started, 0 if outcome.success else 1)
        state = self.state_of(record, key, outcome)
        return state["id"], state["success"], state

    def write_alone(self, pending: Pending) -> None:
        """Send one record alone and record its outcome; a request cut short by an outage fails it."""
        try:
            _, _, state = self.upsert_record(pending.payload, {})
        except ApiOutageError as exc:
            if exc.request_error is not None:  # this request was tried; the ones after it never were
                pending.entry.fail(exc.request_error)
            raise
        self.update_state(state, pending.entry)

    # Outcomes

    def state_of(self, payload: Payload, key: str, outcome: Outcome) -> State:
        """A record's HotGlue state from CBX1's outcome: success, id, externalId, lookupKey, error."""
        state: State = {
            "success": outcome.success,
            "id": outcome.id,
            "externalId": self.route.payload_external_id(payload),
            "lookupKey": key,
        }
        if not outcome.success:
            state["error"] = outcome.error
        if outcome.existing:
            state["existing"] = True
        if outcome.updated:
            state["updated"] = True
        if outcome.unanswered:
            state["unanswered"] = True
        return state

    @staticmethod
    def update_state(state: State, entry: Entry) -> None:
        """Record one record's state in its ledger entry (the one tally point, as HotGlue's update_state)."""
        if state["success"]:
            entry.succeed(
                state.get("id"), updated=state.get("updated", False), existing=state.get("existing", False)
            )
        else:
            entry.fail(state.get("error") or "CBX1 did not write the record (no reason given)")

    def fail_all(
        self, batch: t.Sequence[Pending], path: str, started: float, error: str, *, quiet: bool = False
    ) -> None:
        """The whole request failed: each of its records fails with the reason."""
        for pending in batch:
            pending.entry.fail(error)
        self.finish_request(path, len(batch), started, len(batch), error, quiet=quiet)

    def finish_request(
        self,
        path: str,
        count: int,
        started: float,
        failed: int,
        error: str | None = None,
        *,
        quiet: bool = False,
    ) -> None:
        """Log the request, then checkpoint.

        ERROR with the reason when all of it failed, WARNING when some records failed, else DEBUG
        (a line per successful request would cost more CPU than the rest of the record path).
        `quiet`: a failure already logged once (a missing endpoint), not logged again.
        """
        took = time.monotonic() - started
        if error is not None and not quiet:
            self.logger.error("%s: %d records failed in %.3f s: %s", path, count, took, error)
        elif error is None:
            level = logging.WARNING if failed else logging.DEBUG
            message = "%s: %d records in %.3f s: %d succeeded, %d failed"
            self.logger.log(level, message, path, count, took, count - failed, failed)
        self.run.checkpoint()
