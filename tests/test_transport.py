"""The lean transport: keep-alive, framing, deadlines, secrets, threads, TLS, and when ApiSession uses it."""

from __future__ import annotations

import gzip
import re
import socket
import ssl
import threading
import time
import typing as t
import zlib

import pytest
import requests
from requests.adapters import HTTPAdapter

from target_cbx1.redaction import register_secret
from target_cbx1.responses import read_within
from target_cbx1.session import ApiSession, certificate_message
from target_cbx1.settings import Settings
from target_cbx1.transport import LeanAdapter
from tests import test_security
from tests.conftest import ACCESS_KEY, ORG_ID

certificate = test_security.certificate  # the fixture: a self-signed certificate for 127.0.0.1, its key

Handler = t.Callable[[socket.socket, bytes], bool]  # (connection, request head) -> keep the connection


class RawServer:
    """A loopback server whose handler writes each answer byte for byte; it counts connections and
    requests, and knows when every connection has ended.
    """

    def __init__(self, handler: Handler, context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.heads: list[tuple[int, bytes]] = []  # (connection number, request head)
        self.connections = 0
        self.ended = threading.Semaphore(0)  # released once per connection that ended
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{'https' if self.context else 'http'}://127.0.0.1:{self.port}"

    def wait_for_ends(self, count: int) -> None:
        for _ in range(count):
            assert self.ended.acquire(timeout=5), "a connection was left open"

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:  # closed
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(sock, self.connections), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        try:
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_side=True)
            reader = sock.makefile("rb")
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    head += line
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                reader.read(int(length.group(1)) if length else 0)
                self.heads.append((number, head))
                if not self.handler(sock, head):
                    return
        except OSError:  # the client went away, or refused the certificate
            return
        finally:
            sock.close()
            self.ended.release()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def serve() -> t.Iterator[t.Callable[..., RawServer]]:
    servers: list[RawServer] = []

    def start(handler: Handler, context: ssl.SSLContext | None = None) -> RawServer:
        servers.append(RawServer(handler, context))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def answer(body: bytes = b"hello", *headers: str, status: str = "200 OK") -> bytes:
    lines = [f"HTTP/1.1 {status}", *headers]
    if not any(header.lower().startswith(("content-length", "transfer-encoding")) for header in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def answering(*answers: bytes, keep: bool = True) -> Handler:
    """A handler that sends the answers in turn (the last one ever after)."""
    sent = iter(answers)
    last = answers[-1]

    def handle(sock: socket.socket, head: bytes) -> bool:
        sock.sendall(next(sent, last))
        return keep

    return handle


def get_within(session: requests.Session, url: str, timeout: float) -> requests.Response:
    """GET as ApiSession sends: redirects not followed, the body read by read_within."""
    deadline = time.monotonic() + timeout
    response = session.get(url, timeout=timeout, allow_redirects=False, stream=True)
    read_within(response, deadline, timeout)
    return response


@pytest.fixture
def session() -> t.Iterator[requests.Session]:
    with requests.Session() as http:
        http.trust_env = False
        adapter = LeanAdapter()
        http.mount("http://", adapter)
        http.mount("https://", adapter)
        yield http


# Keep-alive


def test_requests_go_over_one_kept_alive_connection(serve, session):
    server = serve(answering(answer(b"one"), answer(b"two"), answer(b"three")))

    bodies = [session.get(server.url + f"/{n}", timeout=5).content for n in range(3)]

    assert bodies == [b"one", b"two", b"three"]
    assert [number for number, _ in server.heads] == [1, 1, 1]


def test_a_connection_the_server_closed_while_idle_is_not_reused(serve, session):
    server = serve(answering(answer(b"bye"), keep=False))

    first = session.get(server.url, timeout=5)
    server.wait_for_ends(1)
    second = session.get(server.url, timeout=5)

    assert (first.content, second.content) == (b"bye", b"bye")
    assert [number for number, _ in server.heads] == [1, 2]


def test_an_answer_saying_connection_close_is_the_last_on_its_connection(serve, session):
    server = serve(answering(answer(b"last", "Connection: close")))  # the server would go on

    bodies = [session.get(server.url, timeout=5).content for _ in range(2)]

    assert bodies == [b"last", b"last"]
    assert [number for number, _ in server.heads] == [1, 2]
    server.wait_for_ends(1)  # the first connection was closed by the client


@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_a_chunked_compressed_answer_is_decoded_and_its_connection_reused(serve, session, encoding, compress):
    packed = compress(b'{"status": "fine"}' * 100)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (packed[:7], packed[7:30], packed[30:]))
    chunked = answer(chunks + b"0\r\n\r\n", "Transfer-Encoding: chunked", f"Content-Encoding: {encoding}")
    server = serve(answering(chunked, answer(b"after")))

    first = session.get(server.url, timeout=5)
    second = session.get(server.url, timeout=5)

    assert first.content == b'{"status": "fine"}' * 100
    assert first.headers["content-encoding"] == encoding
    assert second.content == b"after"
    assert [number for number, _ in server.heads] == [1, 1]


def test_a_body_that_does_not_decode_is_a_broken_answer(serve, session):
    server = serve(answering(answer(b"not gzip at all", "Content-Encoding: gzip")))

    with pytest.raises(requests.ConnectionError, match="the compressed body does not decode"):
        get_within(session, server.url, 5)


def test_a_body_without_length_ends_with_the_connection(serve, session):
    server = serve(answering(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it", keep=False))

    response = session.get(server.url, timeout=5)

    assert response.content == b"all of it"


def test_a_body_cut_short_is_a_connection_error(serve, session):
    server = serve(answering(answer(b"only ten b", "Content-Length: 100"), keep=False))

    with pytest.raises(requests.ConnectionError, match="the answer broke off"):
        session.get(server.url, timeout=5)


def test_a_server_that_closes_without_answering_is_a_connection_error(serve, session):
    server = serve(answering(b"", keep=False))

    with pytest.raises(requests.ConnectionError, match="without response"):
        session.get(server.url, timeout=5)


def test_a_redirect_is_returned_as_it_came(serve, session):
    server = serve(answering(answer(b"", "Location: http://elsewhere.example/x", status="302 Found")))

    response = get_within(session, server.url, 5)

    assert (response.status_code, response.headers["Location"]) == (302, "http://elsewhere.example/x")
    assert len(server.heads) == 1


# Deadlines


def trickling(at_once: bytes, trickled: bytes) -> Handler:
    """A handler that sends one part of the answer at once, then the rest a byte every 50 ms."""

    def handle(sock: socket.socket, head: bytes) -> bool:
        sock.sendall(at_once)
        for position in range(len(trickled)):
            time.sleep(0.05)
            sock.sendall(trickled[position : position + 1])
        return False

    return handle


@pytest.mark.parametrize(
    ("at_once", "trickled"),
    [(b"", answer(b"")), (answer(b"x" * 30)[:-30], b"x" * 30)],
    ids=["status line and headers", "body"],
)
def test_an_answer_trickled_byte_by_byte_ends_at_the_timeout(serve, session, at_once, trickled):
    server = serve(trickling(at_once, trickled))
    started = time.monotonic()

    with pytest.raises(requests.Timeout):
        get_within(session, server.url, 0.5)

    assert time.monotonic() - started < 1.0


def test_a_server_that_never_answers_times_out(serve, session):
    def silent(sock: socket.socket, head: bytes) -> bool:
        time.sleep(1)
        return False

    server = serve(silent)
    started = time.monotonic()

    with pytest.raises(requests.ReadTimeout, match=r"no answer within the 0\.3 s timeout"):
        session.get(server.url, timeout=0.3)

    assert time.monotonic() - started < 1.5


def test_a_refused_connection_is_a_connection_error_naming_the_host_only(session):
    with socket.create_server(("127.0.0.1", 0)) as free:
        port = free.getsockname()[1]  # nobody listens there any more
    secret = "ak-live-transport-secret"
    register_secret(secret)

    with pytest.raises(requests.ConnectionError) as raised:
        session.get(f"http://127.0.0.1:{port}/t?code={secret}", headers={"Authorization": "Bearer " + secret})

    assert f"cannot connect to 127.0.0.1:{port}" in str(raised.value)
    assert secret not in str(raised.value)


def test_a_header_http_forbids_is_refused_without_quoting_it(serve):
    server = serve(answering(answer()))
    request = requests.Request("GET", server.url).prepare()
    request.headers["Authorization"] = "Bearer tok-123456\r\nX-Evil: 1"  # as ApiSession sets it, unchecked

    with pytest.raises(requests.exceptions.InvalidHeader) as raised:
        LeanAdapter().send(request, timeout=5)

    assert "tok-123456" not in str(raised.value)
    assert server.heads == []


# Threads


def test_threads_never_share_a_connection_and_close_leaves_none_open(serve, session):
    def echo(sock: socket.socket, head: bytes) -> bool:
        path = head.split(b" ")[1]
        time.sleep(0.001)  # long enough for requests from other threads to overlap
        sock.sendall(answer(path))
        return True

    server = serve(echo)
    mismatches: list[tuple[str, bytes]] = []

    def work(thread: int) -> None:
        for n in range(25):
            path = f"/{thread}/{n}"
            body = session.get(server.url + path, timeout=5).content
            if body != path.encode():
                mismatches.append((path, body))

    workers = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    session.close()

    assert mismatches == []
    assert len(server.heads) == 200
    assert server.connections <= 8
    server.wait_for_ends(server.connections)


def test_a_connection_in_use_when_the_adapter_closes_is_closed_after_its_answer(serve, session):
    go_on = threading.Event()

    def answer_when_told(sock: socket.socket, head: bytes) -> bool:
        go_on.wait(5)
        sock.sendall(answer())
        return True

    server = serve(answer_when_told)
    bodies: list[bytes] = []
    request = threading.Thread(target=lambda: bodies.append(session.get(server.url, timeout=5).content))
    request.start()
    while not server.heads:
        time.sleep(0.01)

    session.close()
    go_on.set()
    request.join()

    assert bodies == [b"hello"]
    server.wait_for_ends(1)


# TLS


@pytest.fixture
def tls(certificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


def test_a_self_signed_certificate_fails_with_the_reason_requests_gives(serve, session, tls):
    server = serve(answering(answer()), tls)

    with pytest.raises(requests.exceptions.SSLError) as raised:
        session.get(server.url, timeout=5)

    assert "certificate verify failed: self-signed certificate" in str(raised.value)
    assert "(self-signed certificate)" in certificate_message(server.url, raised.value)


def test_a_private_ca_is_trusted_and_its_connection_reused(serve, session, tls, certificate):
    server = serve(answering(answer(b"secure")), tls)

    bodies = [session.get(server.url, timeout=5, verify=str(certificate[0])).content for _ in range(2)]

    assert bodies == [b"secure", b"secure"]
    assert [number for number, _ in server.heads] == [1, 1]


def test_verification_cannot_be_turned_off(serve, session, tls):
    server = serve(answering(answer()), tls)

    with pytest.raises(ValueError, match="cannot be turned off"):
        session.get(server.url, timeout=5, verify=False)


# The adapter ApiSession mounts


def mounted(monkeypatch: pytest.MonkeyPatch, **environment: str) -> type:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = Settings.model_validate(
        {"api_url": "https://api.cbx1.test", "access_key": ACCESS_KEY, "org_id": ORG_ID}
    )
    api = ApiSession(settings)
    return type(api.session.get_adapter(api.base_url))


def test_api_session_sends_directly_through_the_lean_adapter(monkeypatch):
    assert mounted(monkeypatch) is LeanAdapter
    assert mounted(monkeypatch, HTTPS_PROXY="http://proxy.test:3128", NO_PROXY="cbx1.test") is LeanAdapter


def test_api_session_speaks_to_a_proxy_through_requests_adapter(monkeypatch):
    assert mounted(monkeypatch, HTTPS_PROXY="http://proxy.test:3128") is HTTPAdapter
