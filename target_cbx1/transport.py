"""A lean requests transport adapter: direct HTTP/1.1 over kept-alive http.client connections.

A request through requests' HTTPAdapter costs about twice the CPU, most of it in urllib3. This adapter
sends the prepared request as it is over a pooled http.client connection and wraps the answer in a
requests.Response. It never follows redirects (requests does, when asked), never speaks to a proxy
(HTTPAdapter does), and always verifies TLS certificates.
"""

from __future__ import annotations

import functools
import http.client
import logging
import os
import select
import socket
import ssl
import threading
import time
import typing as t
import zlib
from urllib.parse import urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from target_cbx1.redaction import mask

if t.TYPE_CHECKING:
    from collections.abc import Mapping

    from _typeshed import WriteableBuffer

logger = logging.getLogger("target-cbx1.transport")

ACCEPT_ENCODING = "gzip, deflate"  # the encodings _Body decodes; ask for no other
_DEFAULT_PORTS = {"http": 80, "https": 443}
_READ_SIZE = 65536
_AUTO_HEADER = zlib.MAX_WBITS | 32  # zlib reads a gzip or a zlib (deflate) header alike

_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}  # not EAI_AGAIN

_Key = tuple[str, str, int, bool | str | None]  # scheme, host, port, CA source (None for http)


class HostNotFoundError(requests.ConnectionError):
    """The API's host name does not exist (DNS answered so): trying again will not help."""


class _Deadline:
    """Socket attributes: reads end at `deadline` when one is set, however little each of them waits."""

    deadline: float | None = None
    read_timeout: float | None = None


class _PlainSocket(_Deadline, socket.socket):
    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        _before_read(self)
        return super().recv_into(buffer, nbytes, flags)


class _TLSSocket(_Deadline, ssl.SSLSocket):
    def recv_into(self, buffer: WriteableBuffer, nbytes: int | None = None, flags: int = 0) -> int:
        _before_read(self)
        return super().recv_into(buffer, nbytes, flags)


def _before_read(sock: _PlainSocket | _TLSSocket) -> None:
    """Let the next read wait no longer than the deadline (TimeoutError once it has passed)."""
    if sock.deadline is None:
        return
    remaining = sock.deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the deadline passed")
    sock.settimeout(remaining if sock.read_timeout is None else min(remaining, sock.read_timeout))


class _Connection(http.client.HTTPConnection):
    """An http.client connection over a _PlainSocket, or a _TLSSocket when it has a TLS context."""

    sock: _PlainSocket | _TLSSocket | None

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None) -> None:
        super().__init__(host, port)
        self.default_port = _DEFAULT_PORTS["https" if context else "http"]  # Host names no default port
        self._context = context

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._context is None:
                self.sock = _PlainSocket(fileno=sock.detach())
                self.sock.settimeout(self.timeout)
            else:
                self.sock = t.cast("_TLSSocket", self._context.wrap_socket(sock, server_hostname=self.host))
        except BaseException:
            sock.close()
            raise

    def is_idle(self) -> bool:
        """Whether this kept-alive connection can take a request: nothing to read, not even a close."""
        if self.sock is None:
            return False
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return not poller.poll(0)


class LeanAdapter(BaseAdapter):
    """Sends requests directly (no proxy) over http.client connections reused across requests.

    A connection serves one request at a time: it is taken from the idle ones (or opened) for a
    request and handed back once its answer's body was read to the end; `close` closes the idle ones.
    There are never more idle connections than requests were once in flight together.

    `timeout` bounds connecting, each read, and the answer as a whole, from the request sent to the
    last byte of the body: a server that trickles its headers or body is cut off. Certificate failures
    raise requests.exceptions.SSLError.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._idle: dict[_Key, list[_Connection]] = {}
        self._contexts: dict[bool | str, ssl.SSLContext] = {}
        self._closed = False

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send a prepared request; return its answer, whose body is read from `raw`.

        Raises requests.ConnectTimeout, ReadTimeout, SSLError or ConnectionError, with messages that
        name the host, never a header. `stream` makes no difference (requests reads the body when False);
        `proxies` are not looked at: mount this adapter only where no proxy applies.
        """
        if cert is not None:
            raise ValueError("client certificates are not supported")
        url = urlsplit(request.url or "")
        scheme, port = url.scheme, url.port or _DEFAULT_PORTS[url.scheme]
        key: _Key = (scheme, url.hostname or "", port, verify if scheme == "https" else None)
        connect_timeout, read_timeout = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        conn, reused = self._take(key)
        try:
            answer = self._exchange(conn, reused, key, request, connect_timeout, read_timeout)
        except BaseException:
            conn.close()
            raise
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s -> %d", request.method, mask(request.path_url), answer.status)
        return self._response(request, answer, functools.partial(self._hand_back, key, conn))

    def close(self) -> None:
        """Close the idle connections; those in use are closed when their answer has been read."""
        with self._lock:
            self._closed = True
            idle = [conn for conns in self._idle.values() for conn in conns]
            self._idle.clear()
        for conn in idle:
            conn.close()

    def _exchange(
        self,
        conn: _Connection,
        reused: bool,
        key: _Key,
        request: requests.PreparedRequest,
        connect_timeout: float | None,
        read_timeout: float | None,
    ) -> http.client.HTTPResponse:
        """Send the request and read the answer's status line and headers.

        Nothing is resent here: a kept-alive connection the server closed is left out before the
        request (see _take), and any later failure is the caller's to retry.
        """
        if not reused:
            self._connect(conn, key, connect_timeout)
        sock = conn.sock
        assert sock is not None
        sock.deadline, sock.read_timeout = None, read_timeout
        try:
            sock.settimeout(read_timeout)
            conn.request(request.method or "GET", request.path_url, request.body, request.headers)
            if read_timeout is not None:
                sock.deadline = time.monotonic() + read_timeout
            return conn.getresponse()
        except TimeoutError:
            raise requests.ReadTimeout(
                f"{_where(key)} sent no answer within the {read_timeout:g} s timeout"
            ) from None
        except ssl.SSLError as exc:
            raise requests.ConnectionError(f"TLS with {_where(key)} broke: {_reason(exc)}") from None
        except (ValueError, http.client.InvalidURL):  # their text quotes the header or URL: never shown
            raise requests.exceptions.InvalidHeader(
                "the request was not sent: a header or the URL holds a character HTTP does not allow"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise requests.ConnectionError(f"the exchange with {_where(key)} broke: {_reason(exc)}") from None

    def _connect(self, conn: _Connection, key: _Key, timeout: float | None) -> None:
        """Open the connection, verifying the server's certificate for https."""
        where = _where(key)
        conn.timeout = timeout
        try:
            conn.connect()
        except ssl.SSLError as exc:
            raise requests.exceptions.SSLError(f"TLS with {where} failed: {_reason(exc)}") from None
        except TimeoutError:
            raise requests.ConnectTimeout(f"connecting to {where} timed out after {timeout:g} s") from None
        except socket.gaierror as exc:
            error = HostNotFoundError if exc.errno in _NO_SUCH_NAME else requests.ConnectionError
            raise error(f"cannot connect to {where}: {_reason(exc)}") from None
        except OSError as exc:
            raise requests.ConnectionError(f"cannot connect to {where}: {_reason(exc)}") from None
        logger.debug("New connection to %s", where)

    def _take(self, key: _Key) -> tuple[_Connection, bool]:
        """An idle connection for `key` (and True), or a new one not connected yet (and False)."""
        while True:
            with self._lock:
                idle = self._idle.get(key)
                conn = idle.pop() if idle else None
            if conn is None:
                _, host, port, verify = key
                context = None if verify is None else self._context(verify)
                return _Connection(host, port, context), False
            if conn.is_idle():
                return conn, True
            conn.close()

    def _hand_back(self, key: _Key, conn: _Connection, reusable: bool) -> None:
        """Keep a connection whose answer was read to the end for the next request; close any other."""
        if reusable and conn.sock is not None:
            with self._lock:
                if not self._closed:
                    self._idle.setdefault(key, []).append(conn)
                    return
        conn.close()

    def _context(self, verify: bool | str) -> ssl.SSLContext:
        """The TLS context for a CA source: requests' bundle (certifi) for True, else a file or folder."""
        with self._lock:
            context = self._contexts.get(verify)
            if context is None:
                if verify is False:
                    raise ValueError("TLS certificate verification cannot be turned off")
                source = requests.utils.DEFAULT_CA_BUNDLE_PATH if verify is True else verify
                is_folder = os.path.isdir(source)
                context = ssl.create_default_context(
                    cafile=None if is_folder else source, capath=source if is_folder else None
                )
                context.sslsocket_class = _TLSSocket
                self._contexts[verify] = context
            return context

    def _response(
        self,
        request: requests.PreparedRequest,
        answer: http.client.HTTPResponse,
        on_end: t.Callable[[bool], None],
    ) -> requests.Response:
        headers: CaseInsensitiveDict[str] = CaseInsensitiveDict()
        for name, value in answer.getheaders():
            known = headers.get(name)
            headers[name] = value if known is None else f"{known}, {value}"
        response = requests.Response()
        response.status_code = answer.status
        response.reason = answer.reason
        response.headers = headers
        response.encoding = requests.utils.get_encoding_from_headers(headers)
        response.raw = _Body(answer, on_end, headers.get("Content-Encoding"))
        response.url = request.url or ""
        response.request = request
        return response


class _Body:
    """An answer's body, read the way requests and read_within read urllib3's (read, read1, close,
    release_conn): decoded when the server compressed it, its connection handed back for the next
    request once the body was read to the end, and closed when it is left unread.
    """

    def __init__(
        self, answer: http.client.HTTPResponse, on_end: t.Callable[[bool], None], encoding: str | None
    ) -> None:
        self._answer: http.client.HTTPResponse | None = answer
        self._on_end = on_end
        compressed = encoding is not None and encoding.strip().lower() in ("gzip", "deflate")
        self._decoder = zlib.decompressobj(_AUTO_HEADER) if compressed else None

    def read1(self, amt: int = _READ_SIZE, decode_content: bool = True) -> bytes:
        """The next part of the body, as one read of the socket (or a few, when compressed) brings it;
        b"" at its end.
        """
        while True:
            data = self._receive(amt)
            if self._decoder is None or not decode_content:
                return data
            try:
                decoded = self._decoder.decompress(data) if data else self._decoder.flush()
            except zlib.error as exc:
                self._end(reusable=False)
                message = f"the compressed body does not decode: {exc}"
                raise requests.exceptions.ContentDecodingError(message) from None
            if not data:
                self._decoder = None
            if decoded or not data:
                return decoded

    def read(self, amt: int | None = None, decode_content: bool = True) -> bytes:
        """Up to about `amt` bytes of the body, or all of it."""
        if amt is not None:
            return self.read1(amt, decode_content)
        return b"".join(iter(functools.partial(self.read1, _READ_SIZE, decode_content), b""))

    def close(self) -> None:
        """Stop reading: the connection is closed unless the body was read to the end."""
        self._end(reusable=False)

    release_conn = close

    def _receive(self, amt: int) -> bytes:
        answer = self._answer
        if answer is None:
            return b""
        try:
            data = answer.read1(amt if amt > 0 else _READ_SIZE)
            if not data and answer.length:
                raise http.client.IncompleteRead(b"", answer.length)
        except TimeoutError:
            self._end(reusable=False)
            raise requests.ReadTimeout("no more of the answer within the timeout") from None
        except (OSError, http.client.HTTPException) as exc:
            self._end(reusable=False)
            raise requests.ConnectionError(f"the answer broke off: {_reason(exc)}") from None
        if answer.length == 0 or answer.isclosed():  # the end (http.client marks only the latter)
            self._end(reusable=True)
        return data

    def _end(self, reusable: bool) -> None:
        answer, self._answer = self._answer, None
        if answer is not None:
            answer.close()
            self._on_end(reusable)


def _where(key: _Key) -> str:
    return f"{key[1]}:{key[2]}"


def _reason(exc: BaseException) -> str:
    """An exception's text, or its type when it has none (RemoteDisconnected, IncompleteRead), masked."""
    return mask(str(exc) or type(exc).__name__)
