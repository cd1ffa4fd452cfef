"""The sandbox's HTTP side: the CBX1 contract (auth, /bulk, /upsert, /records) on 127.0.0.1, with faults
scripted (target_cbx1.sandbox.faults) or random (target_cbx1.sandbox.chaos)."""

from __future__ import annotations

import functools
import json
import logging
import random
import re
import secrets
import select
import socket
import sys
import threading
import time
import typing as t
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from target_cbx1.sandbox.chaos import Chaos
from target_cbx1.sandbox.faults import GATEWAY_STATUSES, WRITING_KINDS, Fault, FaultScript, FaultSpecError
from target_cbx1.sandbox.ingestion import (
    DEFAULT_SOURCES,
    EntityStore,
    IngestionRequestError,
    StoredEntity,
    read_records,
)
from target_cbx1.sandbox.store import StoredRecord, UnknownTargetError, UpsertStore

DEFAULT_ACCESS_KEY = "sandbox-access-key"
DEFAULT_ORG_ID = "sandbox-org"
TOKEN_PATH = "/api/g/v1/auth/tokens"
DATA_PATH = re.compile(r"^/api/t/v1/targets/(?P<stream>[^/]+)/(?P<endpoint>bulk|upsert)$")
RECORDS_PATH = re.compile(
    r"^/api/t/v1/targets/integrations/(?P<source>[^/]+)/(?P<object_type>[^/]+)/records$"
)
GATEWAY_PAGE = "<html><head><title>{status} Error</title></head><body><h1>{status} Error</h1></body></html>"
BROKEN_BODIES = {
    "html": "<html><body><h1>Scheduled maintenance</h1></body></html>",
    "empty": "",
    "truncated": '{"status": {"code": "CM000", "message": "Succ',
}
BODILESS_STATUSES = (204, 205, 304)  # HTTP gives these no content, so a status fault sends none
SCRIPTED_MESSAGES = {404: "No route for POST {path}", 405: "Method not allowed"}
DUPLICATE = "Duplicate record"

logger = logging.getLogger("cbx1-sandbox")


@dataclass
class Answer:
    """An HTTP answer; a None answer means the connection is dropped instead.

    With `trickle` seconds the body is sent a byte at a time over that long; whoever sends an answer
    calls its `sent`, when set, once the body is out or the client has gone.
    """

    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = "application/json"
    trickle: float = 0
    trickle_head: bool = False  # the status line and headers go out a byte at a time too
    sent: t.Callable[[], None] | None = None


@dataclass
class Exchange:
    """One data request as the sandbox saw it; times are time.monotonic() values.

    For /records, `stream` is the OBJECT_TYPE and `source` the SOURCE of the path (None for the others).
    """

    endpoint: str
    stream: str
    lookup_keys: tuple[str | None, ...]
    status: int | None
    fault: str | None
    received_at: float
    answered_at: float | None = None
    source: str | None = None


Handled = tuple[Answer | None, tuple[str | None, ...], Fault | None]
Wait = t.Callable[[float], None]  # pauses up to that many seconds (less once the client has hung up)


def envelope(status: int, code: str, message: str, data: t.Any = None, **headers: str) -> Answer:
    body: dict[str, t.Any] = {"status": {"code": code, "message": message}}
    if data is not None:
        body["data"] = data
    return Answer(status, json.dumps(body), dict(headers))


class Sandbox:
    """A CBX1 API simulator on 127.0.0.1; start()/stop() or use it as a context manager."""

    def __init__(
        self,
        *,
        access_key: str = DEFAULT_ACCESS_KEY,
        org_id: str = DEFAULT_ORG_ID,
        port: int = 0,
        latency_ms: float = 0,
        token_max_age: int = 3600,
        faults: t.Iterable[str] = (),
        lookup_fields: t.Mapping[str, str] | None = None,
        seed: int | None = None,
        sources: t.Iterable[str] = DEFAULT_SOURCES,
        chaos: Chaos | None = None,
    ) -> None:
        self.access_key = access_key
        self.org_id = org_id
        self.latency = latency_ms / 1000
        self.token_max_age = token_max_age
        self.store = UpsertStore() if lookup_fields is None else UpsertStore(dict(lookup_fields))
        self.entity_store = EntityStore(tuple(sources))
        self.faults = FaultScript()
        for spec in faults:
            self.faults.add(spec)
        self.chaos = chaos
        self.exchanges: list[Exchange] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self.tokens: dict[str, float] = {}
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.server = _Server(("127.0.0.1", port), _Handler, self)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Sandbox:
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name="cbx1-sandbox", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join()
            self._thread = None
        self.server.server_close()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_fault(self, spec: str) -> None:
        """Script a fault (see target_cbx1.sandbox.faults); raises FaultSpecError for a bad spec."""
        self.faults.add(spec)

    def records(self, stream: str) -> dict[str, StoredRecord]:
        """What the store holds for a stream, by lookup key."""
        return dict(self.store.records.get(stream, {}))

    def entities(self, object_type: str) -> dict[str, StoredEntity]:
        """What the ingestion store holds for ACCOUNT or CONTACT, by normalised lookup key."""
        return dict(self.entity_store.entities.get(object_type, {}))

    def respond(
        self, method: str, target: str, headers: t.Mapping[str, str], body: bytes, wait: Wait = time.sleep
    ) -> Answer | None:
        """The answer to one request (None: drop the connection); header names in lower case.

        Latency and slow faults pause with `wait`: the HTTP side passes one that ends once the client
        has hung up, so an attempt the client abandoned is no longer counted in flight.
        """
        url = urlsplit(target)
        if method == "GET" and url.path == TOKEN_PATH:
            answer = self._token(url.path, parse_qs(url.query), wait)
            return self._delayed(answer, wait) if answer else None
        if url.path.startswith("/_sandbox/"):
            return self._control(method, url.path, body)
        if method == "POST" and (match := DATA_PATH.match(url.path)):
            stream = unquote(match["stream"])
            return self._data(url.path, match["endpoint"], stream, None, headers, body, wait)
        if method == "POST" and (match := RECORDS_PATH.match(url.path)):
            object_type, source = unquote(match["object_type"]), unquote(match["source"])
            return self._data(url.path, "records", object_type, source, headers, body, wait)
        return envelope(404, "CM404", f"No route for {method} {url.path}")

    def _delayed(self, answer: Answer, wait: Wait) -> Answer:
        if self.latency:
            wait(self.latency)
        return answer

    def _token(self, path: str, query: dict[str, list[str]], wait: Wait) -> Answer | None:
        """A token request's answer, or a chaos fault's: it issues the token first if the fault writes."""
        fault = self.chaos.fault("token") if self.chaos is not None else None
        if fault is None:
            return self._issue_token(query)
        answer = self._faulty(fault, path, ())
        if answer is None and fault.kind in WRITING_KINDS:
            answer = self._issue_token(query)
            if fault.kind == "slow":
                wait(fault.number(5))
        return None if fault.kind == "drop-after" else answer

    def _issue_token(self, query: dict[str, list[str]]) -> Answer:
        given = (query.get("authenticationType"), query.get("code"), query.get("orgId"))
        if given != (["ACCESS_KEY"], [self.access_key], [self.org_id]):
            return envelope(401, "AU401", "Invalid access key or organisation")
        token = f"sbx.{secrets.token_urlsafe(24)}"
        with self._lock:
            self.tokens[token] = time.monotonic() + self.token_max_age
        return envelope(200, "CM000", "Success", {"sessionToken": token, "maxAge": self.token_max_age})

    def _control(self, method: str, path: str, body: bytes) -> Answer:
        if method == "GET" and path == "/_sandbox/records":
            return Answer(200, json.dumps(self.store.listing()))
        if method == "GET" and path == "/_sandbox/entities":
            return Answer(200, json.dumps(self.entity_store.listing()))
        if method == "GET" and path == "/_sandbox/chaos":
            if self.chaos is None:
                return envelope(404, "CM404", "Chaos mode is off: start the sandbox with --chaos SEED")
            return Answer(200, json.dumps(self.chaos.report()))
        if method == "POST" and path == "/_sandbox/faults":
            try:
                for spec in json.loads(body or b"[]"):
                    self.add_fault(spec)
            except (ValueError, TypeError, FaultSpecError) as error:
                return envelope(400, "CM400", f"Faults are a JSON list of specs: {error}")
            return envelope(200, "CM000", "Success")
        return envelope(404, "CM404", f"No sandbox route for {method} {path}")

    def _data(
        self,
        path: str,
        endpoint: str,
        stream: str,
        source: str | None,
        headers: t.Mapping[str, str],
        body: bytes,
        wait: Wait,
    ) -> Answer | None:
        """Answer one data request, with latency, in-flight tracking and its Exchange recorded."""
        received_at = time.monotonic()
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            answer, keys, fault = (
                self._records_answer(path, source, stream, headers, body)
                if source is not None  # only /records has a SOURCE
                else self._data_answer(path, stream, endpoint, headers, body)
            )
            status, kind = (answer.status if answer else None), (fault.kind if fault else None)
            exchange = Exchange(endpoint, stream, keys, status, kind, received_at, source=source)
            with self._lock:
                self.exchanges.append(exchange)
            if fault is not None and fault.kind == "slow":
                wait(fault.number(5))
            if fault is not None and fault.kind == "drop-after":
                answer = None  # written, and never answered
            answer = self._delayed(answer, wait) if answer else None
        except BaseException:
            with self._lock:
                self.in_flight -= 1
            raise
        if answer is not None and fault is not None and fault.kind in ("trickle", "trickle-head"):
            # Still in flight while the handler trickles the answer out; it calls sent() at the end.
            answer.trickle, answer.sent = fault.number(5), functools.partial(self._answered, exchange)
            answer.trickle_head = fault.kind == "trickle-head"
        else:
            self._answered(exchange)
        return answer

    def _answered(self, exchange: Exchange) -> None:
        """The answer to an exchange is out (or its client has gone): it is no longer in flight."""
        exchange.answered_at = time.monotonic()
        with self._lock:
            self.in_flight -= 1

    def _data_answer(
        self, path: str, stream: str, endpoint: str, headers: t.Mapping[str, str], body: bytes
    ) -> Handled:
        """(answer, lookup keys of the records, the fault applied) for one /bulk or /upsert request."""
        refusal = self._check_session(headers) or self._check_body(stream, endpoint, body)
        if refusal is not None:
            return refusal, (), None
        payload = json.loads(body)
        records = payload if endpoint == "bulk" else [payload]
        keys = tuple(self.store.key_of(stream, record) for record in records)
        if endpoint == "bulk":
            write = functools.partial(self._upsert_all, stream, records)
            answer, fault = self._with_faults(path, endpoint, headers, keys, write)
        else:
            answer, fault = self._with_faults(
                path, endpoint, headers, keys, lambda _: self._upsert(stream, payload)
            )
        return answer, keys, fault

    def _records_answer(
        self, path: str, source: str, object_type: str, headers: t.Mapping[str, str], body: bytes
    ) -> Handled:
        """(answer, lookup keys of the records, the fault applied) for one /records request."""
        refusal = self._check_session(headers)
        if refusal is not None:
            return refusal, (), None
        try:
            self.entity_store.check_path(source, object_type)
            records = read_records(body)
        except IngestionRequestError as error:
            return envelope(400, "CM400", str(error)), (), None
        keys = tuple(self.entity_store.key_of(object_type, record) for record in records)
        write = functools.partial(self._ingest_all, source, object_type, records)
        answer, fault = self._with_faults(path, "records", headers, keys, write)
        return answer, keys, fault

    def _with_faults(
        self,
        path: str,
        endpoint: str,
        headers: t.Mapping[str, str],
        keys: tuple[str | None, ...],
        write: t.Callable[[Fault | None], Answer],
    ) -> tuple[Answer | None, Fault | None]:
        """The fault for a request carrying these keys, and the answer: the fault's, or what write() gives.

        A scripted fault comes first; without one, chaos may pick one, and its 401 revokes the token.
        """
        fault = self.faults.take(keys)
        if fault is None and self.chaos is not None:
            fault = self.chaos.fault(endpoint, keys)
            if fault is not None and fault.kind == "401":
                with self._lock:
                    self.tokens.pop((headers.get("authorization") or "").partition(" ")[2], None)
        answer = self._faulty(fault, path, keys) if fault else None
        if answer is None and (fault is None or fault.kind in WRITING_KINDS):
            answer = write(fault)
        return answer, fault

    def _check_session(self, headers: t.Mapping[str, str]) -> Answer | None:
        """401 without a live session token, 403 for another organisation; None when both are right."""
        scheme, _, token = (headers.get("authorization") or "").partition(" ")
        with self._lock:
            expires_at = self.tokens.get(token)
        if scheme != "Bearer" or expires_at is None or time.monotonic() >= expires_at:
            return envelope(401, "AU401", "Session token is missing, invalid or expired")
        if headers.get("x-organisation-id") != self.org_id:
            return envelope(403, "AU403", "x-organisation-id does not match the session")
        return None

    def _check_body(self, stream: str, endpoint: str, body: bytes) -> Answer | None:
        """404 for a stream the API does not serve, 400 for a body of the wrong shape."""
        try:
            self.store.lookup_field(stream)
            payload = json.loads(body)
        except UnknownTargetError as error:
            return envelope(404, "CM404", str(error))
        except ValueError as error:
            return envelope(400, "CM400", f"Request body is not valid JSON: {error}")
        if endpoint == "bulk" and not isinstance(payload, list):
            return envelope(400, "CM400", "/bulk takes a JSON array of records")
        if endpoint == "upsert" and not isinstance(payload, dict):
            return envelope(400, "CM400", "/upsert takes one JSON object")
        return None

    def _faulty(self, fault: Fault, path: str, keys: tuple[str | None, ...]) -> Answer | None:
        """The answer a fault replaces the real one with (None for faults that change it otherwise)."""
        if fault.kind == "429":
            seconds = fault.number(1)
            return envelope(429, "RL429", "Too many requests", **{"Retry-After": f"{seconds:g}"})
        if fault.kind in GATEWAY_STATUSES:
            return Answer(int(fault.kind), GATEWAY_PAGE.format(status=fault.kind), content_type="text/html")
        if fault.kind == "401":
            return envelope(401, "AU401", "Session token has been revoked")
        if fault.kind == "not-cm000":
            return envelope(200, "CM500", "Processing failed, please retry later")
        if fault.kind == "body":
            return Answer(200, BROKEN_BODIES[fault.arg or "html"], content_type="text/html")
        if fault.kind == "reject":
            position = keys.index(fault.arg) + 1
            message = f"Validation failed for record {position} (lookupKey '{fault.arg}')"
            return envelope(400, "CM400", message)
        if fault.kind == "answer":
            return Answer(200, fault.answer_body())
        if fault.kind == "status":
            status = int(fault.arg or 0)
            if status in BODILESS_STATUSES:
                return Answer(status, "", content_type=None)
            message = SCRIPTED_MESSAGES.get(status, "Scripted {status}").format(path=path, status=status)
            return envelope(status, f"CM{status}", message)
        if fault.kind == "redirect":
            return Answer(int(fault.arg or 302), "", {"Location": f"{self.url}/moved{path}"}, None)
        return None  # slow, trickle, omit, conflict, drop-after: the real answer, changed; drop: no answer

    def _upsert_all(self, stream: str, records: list[t.Any], fault: Fault | None) -> Answer:
        results = [self.store.upsert(stream, record).as_result() for record in records]
        return self._summary(
            results,
            fault,
            lambda result: bool(result["success"]),
            lambda result: not result["success"],
            _opposite_upsert,
        )

    def _ingest_all(
        self, source: str, object_type: str, records: list[dict[str, t.Any]], fault: Fault | None
    ) -> Answer:
        results = [self.entity_store.ingest(source, object_type, record) for record in records]
        # As CBX1 counts them: a SKIPPED record is neither successful (nothing written) nor failed.
        return self._summary(
            results,
            fault,
            lambda result: result["status"] == "SUCCESS",
            lambda result: result["status"] == "FAILED",
            _opposite_ingestion,
        )

    def _summary(
        self,
        results: list[dict[str, t.Any]],
        fault: Fault | None,
        succeeded: t.Callable[[dict[str, t.Any]], bool],
        failed: t.Callable[[dict[str, t.Any]], bool],
        opposite: t.Callable[[dict[str, t.Any]], dict[str, t.Any]],
    ) -> Answer:
        """The 200 answer to a batch: its results shuffled, less those an omit fault drops, and the counts.

        A conflict fault answers the first result twice, the second time with opposite(result); the counts
        stay those of what was written.
        """
        total = len(results)
        with self._lock:
            self._random.shuffle(results)
        if fault is not None and fault.kind == "omit":
            results = results[int(fault.number(1)) :]
        data = {
            "totalProcessed": total,
            "successful": sum(1 for result in results if succeeded(result)),
            "failed": sum(1 for result in results if failed(result)) + total - len(results),
            "results": results,
        }
        if fault is not None and fault.kind == "conflict" and results:
            data["results"] = [results[0], opposite(results[0]), *results[1:]]
        return envelope(200, "CM000", "Success", data)

    def _upsert(self, stream: str, record: dict[str, t.Any]) -> Answer:
        outcome = self.store.upsert(stream, record)
        if outcome.error is not None:
            return envelope(400, "CM400", outcome.error)
        return envelope(200, "CM000", "Success", {"id": outcome.id, "lookupKey": outcome.lookup_key})


def _opposite_upsert(result: dict[str, t.Any]) -> dict[str, t.Any]:
    """A /bulk result for the same lookupKey with the other outcome, as a conflict fault adds it."""
    if result["success"]:
        return {"success": False, "id": None, "lookupKey": result["lookupKey"], "error": DUPLICATE}
    return {"success": True, "id": str(uuid.uuid4()), "lookupKey": result["lookupKey"]}


def _opposite_ingestion(result: dict[str, t.Any]) -> dict[str, t.Any]:
    """A /records result for the same lookupKey with the other outcome, as a conflict fault adds it."""
    if result["status"] in ("SUCCESS", "SKIPPED"):
        return {"status": "FAILED", "entityId": None, "lookupKey": result["lookupKey"], "error": DUPLICATE}
    return {"status": "SUCCESS", "entityId": str(uuid.uuid4()), "lookupKey": result["lookupKey"]}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], sandbox: Sandbox
    ) -> None:
        super().__init__(address, handler)
        self.sandbox = sandbox

    def handle_error(self, request: t.Any, client_address: t.Any) -> None:
        """A client that hung up mid-request (a killed target) is no error of the sandbox's."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # otherwise each keep-alive answer waits ~40 ms for a delayed ACK
    server: _Server

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        answer = self.server.sandbox.respond(method, self.path, headers, body, self._wait_while_connected)
        if answer is None:
            self.close_connection = True
            return
        data = answer.body.encode()
        try:
            if answer.trickle_head:  # the status line, the headers and the body, a byte at a time
                self._trickle(self._head(answer, data) + data, answer.trickle)
                return
            self.send_response(answer.status)
            if answer.content_type is not None:
                self.send_header("Content-Type", answer.content_type)
            if answer.status not in (204, 304):  # HTTP forbids a Content-Length on these
                self.send_header("Content-Length", str(len(data)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if answer.trickle:
                self._trickle(data, answer.trickle)
            else:
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (slow, trickle fault)
            self.close_connection = True
        finally:
            if answer.sent is not None:
                answer.sent()

    def _wait_while_connected(self, seconds: float) -> None:
        """Pause up to `seconds`, less if the client hangs up meanwhile."""
        deadline = time.monotonic() + seconds
        readable, _, _ = select.select([self.connection], [], [], seconds)
        if not readable:
            return
        try:
            hung_up = not self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            hung_up = True
        if not hung_up:  # it sent more while waiting: wait out the rest
            time.sleep(max(0.0, deadline - time.monotonic()))

    def _head(self, answer: Answer, data: bytes) -> bytes:
        """An answer's status line and headers, as bytes."""
        lines = [f"{self.protocol_version} {answer.status} {HTTPStatus(answer.status).phrase}"]
        lines += [f"Content-Type: {answer.content_type}", f"Content-Length: {len(data)}"]
        lines += [f"{name}: {value}" for name, value in answer.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _trickle(self, data: bytes, seconds: float) -> None:
        """Write data a byte at a time, evenly spread so that the last byte goes out `seconds` from now."""
        started, pause = time.monotonic(), seconds / max(len(data), 1)
        for position in range(len(data)):
            time.sleep(max(0.0, started + (position + 1) * pause - time.monotonic()))
            self.wfile.write(data[position : position + 1])

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """One DEBUG line per request, without the query string (it carries the access key)."""
        logger.debug("%s %s -> %s", self.command, urlsplit(self.path).path, code)

    def log_message(self, format: str, *args: t.Any) -> None:
        logger.debug(format, *args)
