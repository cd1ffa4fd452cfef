"""The HTTP side: Cbx1Client (one session, headers, token, retries) and ApiSink, the base of both sinks."""

from __future__ import annotations

import abc
import collections
import contextlib
import hashlib
import logging
import os
import threading
import time
import typing as t
from dataclasses import dataclass
from time import sleep
from urllib.parse import quote, urljoin

import requests
from pydantic import BaseModel, ValidationError
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from singer_sdk.exceptions import InvalidRecord, MissingKeyPropertiesError
from singer_sdk.sinks import Sink

from target_cbx1 import jsonio
from target_cbx1.auth import TOKEN_PATH, SessionTokenAuth, TokenListener
from target_cbx1.errors import (
    ApiOutageError,
    CredentialsError,
    RejectedError,
    RequestFailedError,
    StopRequested,
    TransientError,
)
from target_cbx1.models import UpsertData
from target_cbx1.pipeline import RequestPool
from target_cbx1.progress import StreamStats
from target_cbx1.ratelimit import RateLimiter
from target_cbx1.records import (
    PayloadOptions,
    RecordRejectedError,
    build_payload,
    external_id_of,
    record_hash,
)
from target_cbx1.redaction import mask
from target_cbx1.responses import read_envelope_data, server_message
from target_cbx1.retries import Action, RetryPolicy, action_for, parse_retry_after
from target_cbx1.validation import CompiledValidator

if t.TYPE_CHECKING:
    from target_cbx1.ledger import Entry
    from target_cbx1.settings import Settings
    from target_cbx1.target import TargetCBX1

logger = logging.getLogger("target-cbx1.client")
DataModel = t.TypeVar("DataModel", bound=BaseModel)


class Cbx1Client:
    """One HTTP session for the whole run: base URL, headers, session token and retries."""

    def __init__(self, settings: Settings, on_new_token: TokenListener | None = None) -> None:
        self.base_url = settings.api_url.rstrip("/") + "/"
        self.timeout = settings.timeout
        self.session = requests.Session()
        self.session.headers.update(
            {
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": settings.user_agent,
                "x-organisation-id": settings.org_id,
                **{header.name: header.value for header in settings.custom_headers},
            }
        )
        self.policy = RetryPolicy(
            max_retries=settings.max_retries,
            base_seconds=settings.backoff_base_seconds,
            max_seconds=settings.backoff_max_seconds,
            retry_after_max_seconds=settings.retry_after_max_seconds,
        )
        # The environment's proxies and CA bundle are read once, not on every request (that costs
        # more CPU than the rest of a request).
        self.session.proxies.update(requests.utils.get_environ_proxies(self.base_url))
        self.session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self.session.trust_env = False
        connections = HTTPAdapter(pool_maxsize=max(10, 4 * settings.max_concurrency))
        self.session.mount("https://", connections)
        self.session.mount("http://", connections)
        self.rate = RateLimiter(settings.max_requests_per_second)
        self.max_failures_in_a_row = settings.max_consecutive_request_failures
        self.failures_in_a_row = 0
        self.gave_up = 0
        self.requests_by_path: collections.Counter[str] = collections.Counter()
        self.retries_by_path: collections.Counter[str] = collections.Counter()
        self.outage: ApiOutageError | None = None
        self.stop_signal: str | None = None
        self._lock = threading.Lock()
        self._headers = {name: str(value) for name, value in self.session.headers.items()}
        self.auth = SessionTokenAuth(
            self.session,
            self.url(TOKEN_PATH),
            access_key=settings.access_key.get_secret_value(),
            org_id=settings.org_id,
            timeout=settings.timeout,
            token=settings.access_token.get_secret_value() if settings.access_token else None,
            expires_at=settings.expires_in,
            on_new_token=on_new_token,
        )

    def url(self, path: str) -> str:
        return urljoin(self.base_url, path)

    def post(self, path: str, body: bytes) -> t.Any:
        """POST a JSON body and return the answer's `data`.

        Raises RequestFailedError (the request's records fail, the run goes on), CredentialsError or
        ApiOutageError (the run stops), or StopRequested (a signal arrived; nothing more is sent).
        """
        with self._lock:
            self.requests_by_path[path] += 1
        delays = self.policy.delays()
        token_refreshed = False
        attempts = 0
        while True:
            self.raise_if_stopping()
            attempts += 1
            try:
                token = self.auth.token()
                response = self._post_once(path, body, token)
                action = action_for(response.status_code)
                if action is not Action.RETRY:
                    self.failures_in_a_row = 0
                if response.status_code == 429:
                    self.rate.slow_down()
                if action is Action.REFRESH_TOKEN and not token_refreshed:
                    logger.info("CBX1 answered 401 to %s; fetching a new session token", path)
                    self.auth.refresh_after_rejection(token)
                    token_refreshed = True
                    continue
                return self._answer(response, action)
            except requests.RequestException as exc:
                error = TransientError(describe_network_error(exc, self.timeout))
            except TransientError as exc:
                error = exc
            backoff = next(delays, None)
            if backoff is None:
                raise self._gave_up(f"{error} (gave up after {attempts} attempts)")
            wait = self.policy.wait_for(backoff, error.retry_after)
            if wait is None:
                raise self._gave_up(
                    f"{error}; the server asked to retry after {error.retry_after:.0f} s, longer "
                    f"than retry_after_max_seconds ({self.policy.retry_after_max_seconds:.0f} s)"
                )
            logger.warning("%s failed (%s); retry %d in %.1f s", path, error, attempts, wait)
            with self._lock:
                self.retries_by_path[path] += 1
            sleep(wait)

    def _post_once(self, path: str, body: bytes, token: str) -> requests.Response:
        """One HTTP attempt, within the rate limit.

        The request is prepared by hand and sent without redirects: the API sends none, and skipping
        requests' generic preparation saves a third of the CPU a request costs.
        """
        self.rate.acquire()
        request = requests.PreparedRequest()
        request.method = "POST"
        request.url = self.url(path)
        request.headers = CaseInsensitiveDict(
            {**self._headers, "Authorization": f"Bearer {token}", "Content-Length": str(len(body))}
        )
        request.body = body
        request.hooks = {"response": []}
        return self.session.send(request, timeout=self.timeout, allow_redirects=False)

    def raise_if_stopping(self) -> None:
        """Before anything new is read or sent: stop for a signal (or a fatal error), or an outage."""
        if self.stop_signal is not None:
            raise StopRequested(self.stop_signal)
        if self.outage is not None:
            raise ApiOutageError(str(self.outage), request_error=None)

    def _gave_up(self, message: str) -> RequestFailedError | ApiOutageError:
        """The error for a request whose retries are spent: an outage once too many failed in a row."""
        with self._lock:
            self.failures_in_a_row += 1
            self.gave_up += 1
            failures = self.failures_in_a_row
        logger.error("Request failed after its retries: %s", message)
        if failures < self.max_failures_in_a_row:
            return RequestFailedError(message)
        self.outage = ApiOutageError(
            f"CBX1 looks down: {failures} requests in a row failed after all their "
            f"retries (last: {message}). The run stopped; the state of what was written is printed. "
            "Rerun the job once the API answers again: records that were not sent will be sent then.",
            request_error=message,
        )
        return self.outage

    @staticmethod
    def _answer(response: requests.Response, action: Action) -> t.Any:
        status = response.status_code
        if action is Action.ACCEPT:
            return read_envelope_data(response)
        message = server_message(response)
        if action is Action.RETRY:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise TransientError(f"HTTP {status}: {message}", retry_after=retry_after)
        if action is Action.REFRESH_TOKEN:
            raise CredentialsError(
                f"CBX1 rejected a freshly issued session token (HTTP 401: {message}). "
                "Check that access_key and org_id belong to the same organisation."
            )
        if action is Action.DENY:
            raise CredentialsError(
                f"CBX1 refused the request (HTTP 403: {message}). The access key lacks permission "
                "for this organisation or endpoint; ask a CBX1 admin to grant it."
            )
        raise RejectedError(f"CBX1 rejected the request (HTTP {status}: {message})", status)


def describe_network_error(exc: requests.RequestException, timeout: float) -> str:
    """A short, secret-free account of a failure below HTTP."""
    if isinstance(exc, requests.Timeout):
        return f"no answer within the {timeout:g} s timeout"
    if isinstance(exc, requests.ConnectionError):
        return f"connection failed: {mask(str(exc))}"
    return f"request failed: {mask(str(exc))}"


def target_path(stream: str, endpoint: str) -> str:
    """The API path of a stream's /bulk or /upsert endpoint (the stream name URL-quoted)."""
    return f"api/t/v1/targets/{quote(stream, safe='')}/{endpoint}"


def batch_id(stream: str, index: int) -> str:
    """HotGlue's hgBatchId: md5 hex of JOB_ROOT:stream:index."""
    job_root = os.environ.get("JOB_ROOT", "job_Example")
    return hashlib.md5(f"{job_root}:{stream}:{index}".encode()).hexdigest()


@dataclass
class Pending:
    """A prepared record waiting for its request."""

    entry: Entry
    key: str
    payload: dict[str, t.Any]


class ApiSink(Sink):
    """Base of BatchSink and RecordSink: accepts records into the ledger and sends payloads."""

    endpoint: t.ClassVar[str]

    def __init__(
        self,
        target: TargetCBX1,
        stream_name: str,
        schema: dict,
        key_properties: t.Sequence[str] | None,
    ) -> None:
        super().__init__(target, stream_name, schema, key_properties)
        self.cbx1 = target
        self.client = target.client
        self.path = target_path(stream_name, self.endpoint)
        self.upsert_path = target_path(stream_name, "upsert")
        self.lookup = target.lookup_rule(stream_name, self.key_properties)
        self.options = PayloadOptions(target.settings.add_stream_key, target.settings.metadata)
        self.output_mapped_record = os.environ.get("OUTPUT_MAPPED_RECORD", "").lower() == "true"
        self.requests = RequestPool(
            target.settings.max_concurrency, f"cbx1-{stream_name}", lambda: self.client.stop_signal
        )
        self.sent = 0
        self.started_at = time.monotonic()
        target.ledger.open_stream(stream_name)

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

    def process_record(self, record: dict, context: dict) -> None:
        """A record given directly is accepted as received."""
        self.accept(record, record)

    def accept(self, received: dict, record: dict) -> None:
        """Give the record its state entry, then queue or send it, or fail it with the reason."""
        self._singer_validate_message(record)
        self.tally_record_read()
        self.record_counter_metric.increment()
        entry = self.cbx1.ledger.add(self.stream_name, record_hash(received), external_id_of(record))
        if entry is None or entry.original is not None:
            return  # written by an earlier run of this job, or identical to an earlier record
        if self.lookup is None:
            entry.fail(self.cbx1.missing_lookup_message(self.stream_name))
            return
        try:
            if self._validator is not None:
                self._validator.validate(record)
            key, payload = build_payload(record, self.stream_name, self.lookup, self.options)
        except InvalidRecord as exc:
            entry.fail(f"record does not match the schema of stream {self.stream_name!r}: {exc}")
            return
        except RecordRejectedError as exc:
            entry.lookup_key = exc.lookup_key
            entry.fail(str(exc))
            return
        entry.lookup_key = key
        self.enqueue(Pending(entry, key, payload))

    @abc.abstractmethod
    def enqueue(self, pending: Pending) -> None:
        """Send the record now, or keep it for the next request."""

    def dispatch(self, batch: list[Pending], path: str, work: t.Callable[[], None]) -> None:
        """Hand a new request to the pool (in a dry run, to the dry run instead)."""
        self.stamp(batch)
        self.sent += len(batch)
        if self.cbx1.dry_run is not None:
            self.cbx1.dry_run.take(self.stream_name, path, batch)
            return
        self.requests.submit(frozenset(pending.key for pending in batch), work)

    def stats(self) -> StreamStats:
        """Records sent, requests and retries of this stream, for the final summary."""
        paths = {self.path, self.upsert_path}
        requests_made = sum(self.client.requests_by_path[path] for path in paths)
        retries = sum(self.client.retries_by_path[path] for path in paths)
        return StreamStats(self.sent, requests_made, retries, self.started_at)

    def stamp(self, batch: list[Pending]) -> None:
        """Give a new request's records their batch id and mapped record, when asked for."""
        chunk_batch_id = self.cbx1.next_batch_id(self.stream_name)
        for pending in batch:
            if chunk_batch_id is not None:
                pending.payload["hgBatchId"] = chunk_batch_id
                pending.entry.batch_id = chunk_batch_id
            if self.output_mapped_record:
                pending.entry.mapped_record = pending.payload

    def exchange(
        self, batch: list[Pending], model: type[DataModel], path: str, body: t.Any
    ) -> DataModel | None:
        """POST the body and read the answer's data as `model`; None when the request failed."""
        started = time.monotonic()
        try:
            data = self.client.post(path, jsonio.encode(body))
        except ApiOutageError as exc:
            if exc.request_error is not None:  # this request was tried; others never were
                self.fail_all(batch, path, started, exc.request_error)
            raise
        except RequestFailedError as exc:
            self.request_failed(batch, path, started, exc)
            return None
        try:
            return model.model_validate(data if data is not None else {})
        except ValidationError:
            self.fail_all(batch, path, started, f"CBX1 answered {path} without a readable data object")
            return None

    def request_failed(
        self, batch: list[Pending], path: str, started: float, exc: RequestFailedError
    ) -> None:
        """The whole request failed: each of its records fails with the reason."""
        self.fail_all(batch, path, started, str(exc))

    def fail_all(self, batch: list[Pending], path: str, started: float, error: str) -> None:
        for pending in batch:
            pending.entry.fail(error)
        self.finish_request(path, len(batch), started, len(batch), error)

    def upsert_one(self, pending: Pending, path: str) -> None:
        """Send one record to /upsert and record its outcome."""
        started = time.monotonic()
        answer = self.exchange([pending], UpsertData, path, pending.payload)
        if answer is not None:
            pending.entry.succeed(answer.id, updated=answer.updated)
            self.finish_request(path, 1, started, 0)

    def finish_request(
        self, path: str, count: int, started: float, failed: int, error: str | None = None
    ) -> None:
        """Log the request, then checkpoint.

        ERROR with the reason when all of it failed, WARNING when some records failed, else DEBUG
        (a line per successful request would cost more CPU than the rest of the record path).
        """
        took = time.monotonic() - started
        if error is not None:
            self.logger.error("%s: %d records failed in %.3f s: %s", path, count, took, error)
        else:
            level = logging.WARNING if failed else logging.DEBUG
            message = "%s: %d records in %.3f s: %d succeeded, %d failed"
            self.logger.log(level, message, path, count, took, count - failed, failed)
        self.cbx1.checkpoint()
